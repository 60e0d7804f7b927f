"""The `wings` config section: Wings' low-rank visual and textual learners and their router.

A section, not a YAML kind of its own: the SFT recipe embeds it (`wings: {...}`) to train a
Wings model, and a saved Wings folder keeps a copy in `wings_config.json`. Light on purpose
(pydantic only): configs are validated before any heavy import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mlan.config.base import StrictModel

# Learning rates from Wings' public training scripts (AIDC-AI/Wings@5dec325, run/*.sh). Their Trainer
# gives `mm_projector_lr` only to parameters named by `lr_projector_follow_tuned_keys` ('mm_projector'
# in the stage-2 scripts) and `learning_rate` to every other trainable parameter, learners and router
# included (wings/trainer.py:142-179).


class WingsStage1LR(StrictModel):
    """Learning rates of stage 1 (projector + visual learners; language model and vision tower frozen)."""

    projector: float = Field(2e-4, gt=0)
    """Learning rate of the multimodal projector: 2e-4, Wings' Llama-3.1 stage-1 script
    (run/pretrain_wings_llama3_1.sh:22; its Qwen1.5 script uses 2e-5, run/pretrain_wings_qwen1_5.sh:22),
    one rate for the projector and the visual learners (no `mm_projector_lr` there)."""
    visual_learners: float = Field(2e-4, gt=0)
    """Learning rate of the visual learners: the same script's single rate, 2e-4."""


class WingsStage2LR(StrictModel):
    """Learning rates of stage 2 (both learners + router + full language model; vision tower frozen)."""

    language_model: float = Field(2e-6, gt=0)
    """Learning rate of the language model (embeddings, decoder layers, head): 2e-6, the paper and Wings'
    stage-2 scripts (`--learning_rate`, run/finetune_wings_qwen1_5.sh:25, run/finetune_wings_llama3_1.sh:25)."""
    projector: float = Field(1e-5, gt=0)
    """Learning rate of the multimodal projector: 1e-5 (`--mm_projector_lr`, the same scripts' line 24)."""
    learners: float = Field(2e-6, gt=0)
    """Learning rate of the visual and textual learners: 2e-6, the scripts' `--learning_rate`, which
    Wings' Trainer gives every trainable parameter but the projector."""
    router: float = Field(2e-6, gt=0)
    """Learning rate of the routers: 2e-6, as the learners'."""


class WingsConfig(StrictModel):
    """Wings learners added to a LLaVA-style model (Zhang et al. 2024, arXiv 2406.03496)."""

    rank: int = Field(64, gt=0)
    """Rank r of every low-rank projection of a learner (the paper uses 64 at hidden size 4096)."""
    layers: Literal["all"] | list[int] = "all"
    """Decoder layers that get learners: `all`, or a list of 0-based layer indices."""
    router: Literal["attention", "modality"] = "attention"
    """How the per-token learner weights are computed from the main attention. `attention` (the paper's,
    and Wings' `wings_router_type: linear`): a linear layer over the main branch's attention probabilities
    summed over heads, by key position (AIDC-AI/Wings@5dec325:wings/model/base_module.py:81-98); it needs
    eager attention, which `mlan sft` then loads. `modality`: the main branch's attention mass on image
    keys vs text keys, per head (mlan's alternative; works with any attention kernel, SDPA included)."""
    router_max_positions: int = Field(4096, gt=0)
    """Input size of the `attention` router: key positions at or beyond it are pooled into the last slot."""
    init_std: float = Field(0.02, gt=0)
    """Standard deviation of the initialisation of the down projections (A), as Wings draws them (torch's
    `trunc_normal_` with its default +-2 absolute cut, in effect untruncated at this std), and of the routers'
    weights (truncated at +-2 std, zero bias: mlan.wings.router); the up projections (B) start at zero, so a
    new learner's output is exactly zero."""
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
