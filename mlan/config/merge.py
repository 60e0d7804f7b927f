"""The merge config (`mlan merge`): which models, which method, which alpha and density.

One alpha and one density make one merge; lists of them make a sweep, where every point is
merged and evaluated and the best one is chosen (see `mlan.merge.sweep`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlan.config.base import StrictModel

MergeMethod = Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"]
METHODS: tuple[str, ...] = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear")
SPARSE_METHODS: tuple[str, ...] = ("ties", "dare_ties", "dare_linear")
RANDOM_METHODS: tuple[str, ...] = ("dare_ties", "dare_linear")


class SweepSettings(StrictModel):
    """How a sweep evaluates its merged models and picks the best one."""

    suites: list[str] = Field(default_factory=list)
    """Evaluation suites (shipped names like `language-tiny`, or YAML paths) run on every merged model;
    name both a language and a vision suite to see the trade-off."""

    criterion: str = "mean"
    """How the best point is chosen: `mean` (all tasks), `language` or `vision` (mean over that
    modality's tasks), or one task's name."""

    max_vision_drop: float | None = Field(default=None, ge=0)
    """If set, points whose vision mean falls more than this (absolute score) below the alpha-0 point's
    are not eligible as best (requires an alpha-0 point and vision tasks)."""

    keep_merged: bool = False
    """Keep every merged model folder under the output's `models/` (by default each is deleted after
    evaluation, since each is as large as the multimodal model)."""

    device: str | None = None
    """Device for evaluation (`cpu`, `cuda`, ...); default: a GPU when one is visible."""

    limit: int | None = Field(default=None, ge=1)
    """Evaluate at most this many examples per task (quick sweeps)."""


class MergeConfig(StrictModel):
    """Merge the original LLM back into a multimodal model's language model, training-free:
    merged = theta_vlm + alpha * sparsify_density(theta_llm - theta_vlm)."""

    multimodal: str
    """The multimodal model (a LLaVA folder, or a hub id when online) whose language model is merged into."""

    original: str
    """The original text-only LLM (a causal-LM folder or hub id) the multimodal model was built from."""

    method: MergeMethod = "task_arithmetic"
    """linear, task_arithmetic, ties (magnitude trim), dare_linear or dare_ties (random drop and rescale)."""

    alpha: float | list[float] = 0.1
    """Weight of the original LLM's task vector in [0, 1]: 0 keeps the multimodal model, 1 gives the
    original LLM's language weights; a list makes a sweep."""

    density: float | list[float] = 1.0
    """Fraction K of the task vector kept, in (0, 1]; below 1 only for ties, dare_linear, dare_ties.
    A list makes a sweep."""

    sparsify_scope: Literal["tensor", "global"] = "tensor"
    """Where ties' magnitude trim keeps the fraction K: `tensor`, in each tensor (mergekit's scope);
    `global`, over the whole task vector with one threshold (the TIES authors' code), so tensors whose
    task vector is small keep less. DARE drops entries independently, so it has no scope."""

    seed: int = 0
    """Seed of DARE's random masks (each tensor's mask comes from this seed and its name)."""

    out: str | None = None
    """Output folder (the merged LLaVA model; for a sweep, the report and any kept models)."""

    sweep: SweepSettings = Field(default_factory=SweepSettings)
    """Evaluation and selection settings, used when alpha or density is a list."""

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float | list[float]) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ValueError("expected at least one alpha")
        for a in values:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {a}")
        return v

    @field_validator("density")
    @classmethod
    def _density_range(cls, v: float | list[float]) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ValueError("expected at least one density")
        for d in values:
            if not 0.0 < d <= 1.0:
                raise ValueError(f"density must be in (0, 1], got {d}")
        return v

    @model_validator(mode="after")
    def _density_needs_sparse_method(self) -> MergeConfig:
        if self.method not in SPARSE_METHODS and any(d != 1.0 for d in self.densities):
            raise ValueError(
                f"density: method {self.method} keeps the whole task vector (density 1); "
                f"use one of {', '.join(SPARSE_METHODS)} to sparsify"
            )
        return self

    @model_validator(mode="after")
    def _global_scope_needs_ties(self) -> MergeConfig:
        if self.sparsify_scope == "global" and self.method != "ties":
            raise ValueError(
                f"sparsify_scope: global applies to ties' magnitude trim, not to method {self.method} "
                "(DARE drops each entry independently, so it has no scope)"
            )
        return self

    @property
    def alphas(self) -> list[float]:
        """The alpha values as a list."""
        return list(self.alpha) if isinstance(self.alpha, list) else [self.alpha]

    @property
    def densities(self) -> list[float]:
        """The density values as a list."""
        return list(self.density) if isinstance(self.density, list) else [self.density]

    @property
    def points(self) -> list[tuple[float, float]]:
        """Every (alpha, density) pair, densities outer, in the given order."""
        return [(a, d) for d in self.densities for a in self.alphas]

    @property
    def is_sweep(self) -> bool:
        """True when more than one (alpha, density) point is asked for."""
        return len(self.points) > 1
