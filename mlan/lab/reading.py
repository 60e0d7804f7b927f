"""The lab's reading of the effects: statistics over seeds and whether each of E1-E6 held.

`summary_rows` turns the seeds' typed results into one `Row` per model (mean and range over seeds) and
`read_effects` decides from those numbers whether each effect held; `LabSummary` holds them with the
reading's text. The text, tables and files are `mlan.lab.report`, the plots `mlan.lab.plots`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlan.lab.plan import (
    BASE_LABELS,
    LANGUAGE_ONLY,
    LITTLE_VISION,
    MERGE_BASE,
    PRETRAINED_LLM,
    STAGE1,
    VARIANTS,
    WINGS,
    LabPlan,
)
from mlan.lab.results import SeedResult, TrainCost, VariantScore

# Points by which a score counts as moved: above the +-3-point noise of 200-question test sets
# (with a smaller test set, the noise is larger and the reading says so).
MARGIN = 0.05


@dataclass(frozen=True)
class Stat:
    """Mean and range of one accuracy over the seeds that measured it."""

    mean: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float | None]) -> Stat | None:
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        return cls(sum(vals) / len(vals), min(vals), max(vals), len(vals))


@dataclass(frozen=True)
class Row:
    """One model's line of the table: language and vision accuracy over seeds, and per seed.

    Merge points have `alpha` set (their `name` is "merge"); `per_seed` holds (language, vision)
    in the order of the seeds, None where a seed has no such score.
    """

    name: str
    label: str
    language: Stat | None
    vision: Stat | None
    per_seed: list[tuple[float | None, float | None]] = field(default_factory=list)
    alpha: float | None = None
    # What training this model cost (its own stage only), over seeds; None for merges (no training).
    text_tokens: Stat | None = None
    image_tokens: Stat | None = None
    train_seconds: Stat | None = None
    probe: Stat | None = None  # the vision questions in the base phrasing (what it reads from an image)

    @property
    def tokens(self) -> float | None:
        """Mean training tokens of its stage, text and image together."""
        if self.text_tokens is None or self.image_tokens is None:
            return None
        return self.text_tokens.mean + self.image_tokens.mean

    @property
    def key(self) -> str:
        """Its key under `summary` in lab.json."""
        return self.name if self.alpha is None else f"merge_{self.alpha:g}"


@dataclass(frozen=True)
class E1:
    """Vision-only tuning loses language against the stage-1 model."""

    shown: bool
    stage1_language: float
    vision_only_language: float
    drop: float


@dataclass(frozen=True)
class Point:
    language: float | None
    vision: float | None


@dataclass(frozen=True)
class E2:
    """A little vision data (12.5%) keeps the language and matches vision-only's vision."""

    shown: bool
    keeps_language: bool
    matches_vision: bool
    language: float
    vision: float
    vision_only_vision: float
    stage1_language: float
    language_only: Point


@dataclass(frozen=True)
class E3:
    """Merging the pretrained LLM back into the vision-only model recovers language, keeping vision."""

    shown: bool
    best_alpha: float
    best_language: float
    best_vision: float | None
    alpha: float | None
    language: float | None
    vision: float | None
    vision_only_language: float
    vision_only_vision: float | None
    meaningful: bool  # E1 showed: there was language to recover


@dataclass(frozen=True)
class E4:
    """Language-only tuning lifts vision over the stage-1 model: instruction following learned on text
    used on images (no image in its stage-2 data)."""

    shown: bool
    lifts: bool  # above the stage-1 model by the margin
    reads_images: bool  # above the guessing level by the margin (not checked without a chance level)
    stage1_vision: float
    language_only_vision: float
    lift: float
    chance: float | None
    vision_only_vision: float | None
    # The same images asked in the base phrasing stage 1 was aligned on (None: not measured): whether
    # the model reads the image at all, whatever the answer format.
    stage1_probe: float | None = None
    language_only_probe: float | None = None


@dataclass(frozen=True)
class E5:
    """A language-heavy mixture reaches vision-only's vision score with fewer stage-2 training tokens."""

    shown: bool
    reaches: bool
    fewer_tokens: bool
    variant: str
    vision: float
    tokens: float
    seconds: float | None
    vision_only_vision: float
    vision_only_tokens: float
    vision_only_seconds: float | None
    token_ratio: float  # vision-only's tokens / the variant's


@dataclass(frozen=True)
class E6:
    """Wings' learners keep language better than plain vision-only tuning at equal vision."""

    shown: bool
    equal_vision: bool
    keeps_language: bool
    language: float
    vision: float
    vision_only_language: float
    vision_only_vision: float


EFFECT_KEYS = ("E1", "E2", "E3", "E4", "E5", "E6")


@dataclass(frozen=True)
class Effects:
    """Which effects this run measured (None: not measured) and whether each held."""

    e1: E1 | None = None
    e2: E2 | None = None
    e3: E3 | None = None
    e4: E4 | None = None
    e5: E5 | None = None
    e6: E6 | None = None
    margin: float = MARGIN

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(EFFECT_KEYS, (self.e1, self.e2, self.e3, self.e4, self.e5, self.e6), strict=True))

    @property
    def missing(self) -> list[str]:
        return [k for k, e in self.items() if e is None]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"margin": self.margin}
        for key, e in self.items():
            if e is not None:
                out[key] = asdict(e)
        return out


@dataclass
class LabSummary:
    """Every seed's results, a row per model, the effects and their reading."""

    plan: LabPlan
    seeds: list[SeedResult]
    rows: list[Row]
    effects: Effects
    reading: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """The content of lab.json."""

        def stat(s: Stat | None):
            return None if s is None else asdict(s)

        return {
            "plan": asdict(self.plan),
            "seeds": {str(r.seed): r.to_json() for r in self.seeds},
            "summary": {r.key: {"language": stat(r.language), "vision": stat(r.vision)} for r in self.rows},
            "seconds": round(self.seconds, 1),
            "effects": self.effects.to_json(),
            "reading": self.reading,
        }


# --------------------------------------------------------------------------- statistics and effects


def summary_rows(plan: LabPlan, results: list[SeedResult]) -> list[Row]:
    """The table's rows in order: the pretrained LLM, stage 1, each variant, each merge alpha."""

    def row(name: str, label: str, scores: list, alpha: float | None = None, costs: list | None = None) -> Row:
        per_seed = [(None, None) if s is None else (s.language, s.vision) for s in scores]
        lang, vis = Stat.of([p[0] for p in per_seed]), Stat.of([p[1] for p in per_seed])
        cs: list[TrainCost] = [c for c in costs or [] if c is not None]
        text, image, secs = (Stat.of([getattr(c, k) for c in cs]) for k in ("text_tokens", "image_tokens", "seconds"))
        probe = Stat.of([x.probe for x in scores if isinstance(x, VariantScore)])  # merges have no probe
        return Row(name, label, lang, vis, per_seed, alpha, text, image, secs, probe)

    names = [(PRETRAINED_LLM, BASE_LABELS[PRETRAINED_LLM]), (STAGE1, BASE_LABELS[STAGE1])]
    names += [(v, VARIANTS[v].label) for v in plan.variants]
    rows = [
        row(name, label, [r.score(name) for r in results], costs=[r.costs.get(name) for r in results])
        for name, label in names
    ]
    for a in plan.alphas:
        rows.append(row("merge", f"merge alpha {a:g} (vision only + LLM)", [r.merge(a) for r in results], a))
    return rows


def _means(rows: list[Row]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    def mean(s: Stat | None) -> float | None:
        return s.mean if s else None

    models = [r for r in rows if r.alpha is None]
    return {r.name: mean(r.language) for r in models}, {r.name: mean(r.vision) for r in models}


def read_effects(rows: list[Row], margin: float = MARGIN, chance: float | None = None) -> Effects:
    """Whether E1-E6 showed, computed from the rows' mean scores (None: not measured); `chance` is the
    vision test's guessing level (E4)."""
    lang, vis = _means(rows)
    s1, vo, vo_vis = lang.get(STAGE1), lang.get(MERGE_BASE), vis.get(MERGE_BASE)
    e1 = None
    if s1 is not None and vo is not None:
        e1 = E1(shown=vo <= s1 - margin, stage1_language=s1, vision_only_language=vo, drop=s1 - vo)
    e2 = None
    v12_lang, v12_vis = lang.get(LITTLE_VISION), vis.get(LITTLE_VISION)
    if s1 is not None and v12_lang is not None and v12_vis is not None and vo_vis is not None:
        keeps, matches = v12_lang >= s1 - margin, v12_vis >= vo_vis - margin
        e2 = E2(
            shown=keeps and matches, keeps_language=keeps, matches_vision=matches, language=v12_lang,
            vision=v12_vis, vision_only_vision=vo_vis, stage1_language=s1,
            language_only=Point(lang.get(LANGUAGE_ONLY), vis.get(LANGUAGE_ONLY)),
        )  # fmt: skip
    # (alpha, language, vision) of every merge point with a language score, in the plan's alpha order
    merges = [
        (r.alpha, r.language.mean, r.vision.mean if r.vision else None)
        for r in rows
        if r.alpha is not None and r.language
    ]
    e3 = _read_e3(merges, vo, vo_vis, bool(e1 and e1.shown), margin) if merges and vo is not None else None
    s1_vis, lo_vis = vis.get(STAGE1), vis.get(LANGUAGE_ONLY)
    e4 = None
    if s1_vis is not None and lo_vis is not None:
        # A lift to the guessing level is the answer's form learned, not the image read: both must show.
        lifts = lo_vis >= s1_vis + margin
        reads = chance is None or lo_vis >= chance + margin
        probes = {r.name: r.probe.mean for r in rows if r.alpha is None and r.probe}
        e4 = E4(
            lifts and reads, lifts, reads, s1_vis, lo_vis, lo_vis - s1_vis, chance, vo_vis,
            probes.get(STAGE1), probes.get(LANGUAGE_ONLY),
        )  # fmt: skip
    e5 = _read_e5({r.name: r for r in rows if r.alpha is None}, margin)
    w_lang, w_vis = lang.get(WINGS), vis.get(WINGS)
    e6 = None
    if w_lang is not None and w_vis is not None and vo is not None and vo_vis is not None:
        equal, keeps = abs(w_vis - vo_vis) <= margin, w_lang >= vo + margin
        e6 = E6(equal and keeps, equal, keeps, w_lang, w_vis, vo, vo_vis)
    return Effects(e1, e2, e3, e4, e5, e6, margin)


def _read_e5(models: dict[str, Row], margin: float) -> E5 | None:
    """E5 from the stage-2 rows with costs: the 12.5% vision mixture (the language-heavy MLAN_v one)
    against vision-only; needs both runs' vision scores and tokens."""
    vo, mix = models.get(MERGE_BASE), models.get(LITTLE_VISION)
    if vo is None or mix is None or vo.vision is None or mix.vision is None or not vo.tokens or not mix.tokens:
        return None
    reaches = mix.vision.mean >= vo.vision.mean - margin
    fewer = mix.tokens < vo.tokens

    def secs(r: Row) -> float | None:
        return r.train_seconds.mean if r.train_seconds else None

    return E5(
        shown=reaches and fewer, reaches=reaches, fewer_tokens=fewer, variant=LITTLE_VISION,
        vision=mix.vision.mean, tokens=mix.tokens, seconds=secs(mix), vision_only_vision=vo.vision.mean,
        vision_only_tokens=vo.tokens, vision_only_seconds=secs(vo), token_ratio=vo.tokens / mix.tokens,
    )  # fmt: skip


def _read_e3(
    merges: list[tuple[float, float, float | None]], vo: float, vo_vis: float | None, meaningful: bool, margin: float
) -> E3:
    """E3 from the merge points (alpha, language, vision), in the plan's alpha order."""
    best = max(merges, key=lambda m: (m[1], -m[0]))
    # "Recovers language while keeping most vision": the merge with the best language among those
    # whose vision stays within the margin of the vision-only model's (ties: the smaller alpha).
    keeps = [m for m in merges if vo_vis is None or (m[2] is not None and m[2] >= vo_vis - margin - 1e-9)]
    pick = max(keeps, key=lambda m: (m[1], -m[0])) if keeps else None
    return E3(
        shown=pick is not None and pick[1] >= vo + margin, best_alpha=best[0], best_language=best[1],
        best_vision=best[2], alpha=pick[0] if pick else None, language=pick[1] if pick else None,
        vision=pick[2] if pick else None, vision_only_language=vo, vision_only_vision=vo_vis, meaningful=meaningful,
    )  # fmt: skip
