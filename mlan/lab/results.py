"""Typed results of one lab seed: what the runner measures and the report reads.

Accuracies are fractions (0..1); `None` where the model was asked no such questions (the text-only
LLM has no vision score). The JSON shapes (`seed.json`, the `seeds` part of `lab.json`) are made
here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What an evaluation returns per task: (suite, task, modality, accuracy).
TaskScore = tuple[str, str, str, float]


def _mean(results: list[TaskScore], modality: str) -> float | None:
    vals = [v for _, _, m, v in results if m == modality]
    return sum(vals) / len(vals) if vals else None


@dataclass(frozen=True)
class VariantScore:
    """One scored model of a seed (`pretrained_llm`, `stage1` or a stage-2 variant): the mean
    accuracy over its language and over its vision tasks, and every task's (`suite/task`)."""

    name: str
    language: float | None
    vision: float | None
    tasks: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, results: list[TaskScore]) -> VariantScore:
        tasks = {f"{s}/{t}": v for s, t, _, v in results}
        return cls(name, _mean(results, "language"), _mean(results, "vision"), tasks)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": dict(self.tasks), "language": self.language, "vision": self.vision}


@dataclass(frozen=True)
class MergePoint:
    """The vision-only model with the pretrained LLM merged back at `alpha`, and its scores."""

    alpha: float
    language: float | None
    vision: float | None
    tasks: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, alpha: float, results: list[TaskScore]) -> MergePoint:
        s = VariantScore.of("", results)
        return cls(alpha, s.language, s.vision, s.tasks)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": dict(self.tasks), "language": self.language, "vision": self.vision}


@dataclass
class SeedResult:
    """Everything one seed produced: a score per model, a point per merge alpha, seconds per stage."""

    seed: int
    scores: list[VariantScore]
    merges: list[MergePoint] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, in the order they ran
    seconds: float = 0.0

    def score(self, name: str) -> VariantScore | None:
        return next((s for s in self.scores if s.name == name), None)

    def merge(self, alpha: float) -> MergePoint | None:
        return next((m for m in self.merges if m.alpha == alpha), None)

    def to_json(self) -> dict[str, Any]:
        """As in `seed.json` and `lab.json`: scores by model name, merge points by alpha (`%g`)."""
        return {
            "seed": self.seed,
            "scores": {s.name: s.to_json() for s in self.scores},
            "merge": {f"{m.alpha:g}": m.to_json() for m in self.merges},
            "timings": dict(self.timings),
            "seconds": self.seconds,
        }
