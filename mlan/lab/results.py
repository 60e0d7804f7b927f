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
# The probe suite (evaluations/lab_vision_base.yaml): kept apart from the vision mean.
PROBE_SUITE = "lab_vision_base"


def _avg(vals: list[float]) -> float | None:
    return sum(vals) / len(vals) if vals else None


def _mean(results: list[TaskScore], modality: str) -> float | None:
    return _avg([v for s, _, m, v in results if m == modality and s != PROBE_SUITE])


def _probe(results: list[TaskScore]) -> float | None:
    return _avg([v for s, _, _, v in results if s == PROBE_SUITE])


@dataclass(frozen=True)
class VariantScore:
    """One scored model of a seed (`pretrained_llm`, `stage1` or a stage-2 variant): the mean
    accuracy over its language and over its vision tasks, every task's (`suite/task`), and the probe:
    the vision questions in the base phrasing (what it reads from an image, whatever the format)."""

    name: str
    language: float | None
    vision: float | None
    tasks: dict[str, float] = field(default_factory=dict)
    probe: float | None = None

    @classmethod
    def of(cls, name: str, results: list[TaskScore]) -> VariantScore:
        tasks = {f"{s}/{t}": v for s, t, _, v in results}
        return cls(name, _mean(results, "language"), _mean(results, "vision"), tasks, _probe(results))

    def to_json(self) -> dict[str, Any]:
        return {"tasks": dict(self.tasks), "language": self.language, "vision": self.vision, "probe": self.probe}


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


@dataclass(frozen=True)
class TrainCost:
    """What one training run cost: optimizer steps, rows seen, the tokens they carry (text and image
    apart) and the trainer's seconds. Tokens are the mixture manifest's (message content without the
    chat template; `image_tokens` per image) times the passes over it (rows seen / mixture rows)."""

    steps: int
    rows_seen: int
    text_tokens: int
    image_tokens: int
    seconds: float

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    @classmethod
    def of(cls, manifest: dict[str, Any], steps: int, global_batch: int, seconds: float) -> TrainCost:
        mods = manifest["modalities"]
        rows = sum(m["examples"] for m in mods.values())
        seen = steps * global_batch
        passes = seen / rows if rows else 0.0
        text = sum(m["text_tokens"] for m in mods.values())
        image = sum(m["image_tokens"] for m in mods.values())
        return cls(steps, seen, round(text * passes), round(image * passes), round(seconds, 1))

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "rows_seen": self.rows_seen, "text_tokens": self.text_tokens,
            "image_tokens": self.image_tokens, "seconds": self.seconds,
        }  # fmt: skip


@dataclass
class SeedResult:
    """Everything one seed produced: a score per model, a point per merge alpha, seconds per stage."""

    seed: int
    scores: list[VariantScore]
    merges: list[MergePoint] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, in the order they ran
    seconds: float = 0.0
    costs: dict[str, TrainCost] = field(default_factory=dict)  # trained model -> what its training cost
    vision_chance: float | None = None  # the vision test's guessing level (mlan.lab.world.vision_chance)

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
            "costs": {k: c.to_json() for k, c in self.costs.items()},
            "vision_chance": self.vision_chance,
        }
