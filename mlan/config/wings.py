"""The `wings` config section: Wings' low-rank visual and textual learners and their router.

A section, not a YAML kind of its own: the SFT recipe embeds it (`wings: {...}`) to train a
Wings model, and a saved Wings folder keeps a copy in `wings_config.json`. Light on purpose
(pydantic only): configs are validated before any heavy import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mlan.config.base import StrictModel


class WingsStage1LR(StrictModel):
    """Learning rates of stage 1 (projector + visual learners; language model and vision tower frozen)."""

    projector: float = Field(1e-3, gt=0)
    """Learning rate of the multimodal projector (LLaVA's own pretraining stage uses 1e-3)."""
    visual_learners: float = Field(1e-4, gt=0)
    """Learning rate of the visual learners (not given in the paper; 1e-4 is a common low-rank adapter rate)."""


class WingsStage2LR(StrictModel):
    """Learning rates of stage 2 (both learners + router + full language model; vision tower frozen)."""

    language_model: float = Field(2e-6, gt=0)
    """Learning rate of the language model (embeddings, decoder layers, head): 2e-6 in the paper."""
    projector: float = Field(1e-5, gt=0)
    """Learning rate of the multimodal projector: 1e-5 in the paper."""
    learners: float = Field(1e-4, gt=0)
    """Learning rate of the visual and textual learners (not given in the paper)."""
    router: float = Field(1e-4, gt=0)
    """Learning rate of the routers (not given in the paper)."""


class WingsConfig(StrictModel):
    """Wings learners added to a LLaVA-style model (Zhang et al. 2024, arXiv 2406.03496)."""

    rank: int = Field(64, gt=0)
    """Rank r of every low-rank projection of a learner (the paper uses 64 at hidden size 4096)."""
    layers: Literal["all"] | list[int] = "all"
    """Decoder layers that get learners: `all`, or a list of 0-based layer indices."""
    router: Literal["attention", "modality"] = "modality"
    """How the per-token learner weights are computed from the main attention. `attention`: the paper's
    form, the main branch's attention probabilities summed over heads and pooled by key position
    (needs eager attention). `modality`: the main branch's attention mass on image keys vs text keys,
    per head (works with any attention kernel, SDPA included)."""
    router_max_positions: int = Field(4096, gt=0)
    """Input size of the `attention` router: key positions at or beyond it are pooled into the last slot."""
    init_std: float = Field(0.02, gt=0)
    """Standard deviation of the truncated-normal initialisation of the down projections (A) and the
    routers; the up projections (B) start at zero, so a new learner's output is exactly zero."""
    stage1: WingsStage1LR = Field(default_factory=WingsStage1LR)
    """Learning rates of stage 1."""
    stage2: WingsStage2LR = Field(default_factory=WingsStage2LR)
    """Learning rates of stage 2."""

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, v: Literal["all"] | list[int]) -> Literal["all"] | list[int]:
        if v == "all":
            return v
        if not v:
            raise ValueError("expected `all` or a non-empty list of layer indices")
        bad = [i for i in v if i < 0]
        if bad:
            raise ValueError(f"layer indices are 0-based and non-negative (got {bad[0]})")
        if len(set(v)) != len(v):
            raise ValueError("layer indices must be unique")
        return sorted(v)
