"""The lab's report: statistics over seeds, the effects E1-E6 read from them, and the files.

`summarise` turns the seeds' typed results into one `Row` per model (mean and range over seeds),
`read_effects` decides from those numbers whether each effect held, `reading_text` says so in one
paragraph, and `write_report` writes `lab.png`, `lab_tokens.png`, `lab.md` and (last) `lab.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlan.io import atomic_write_json, atomic_write_text
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


@dataclass
class LabReport:
    """What `run_lab` produced: every score, the summary over seeds, the reading of the effects."""

    out: Path
    data: dict[str, Any]  # lab.json
    table: str
    reading: str
    files: dict[str, str]
    summary: LabSummary


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


def summarise(plan: LabPlan, results: list[SeedResult], seconds: float) -> LabSummary:
    """Every score per seed, the mean and range over seeds per row, and the effects read from them."""
    rows = summary_rows(plan, results)
    chance = Stat.of([r.vision_chance for r in results])
    effects = read_effects(rows, chance=chance.mean if chance else None)
    return LabSummary(plan, results, rows, effects, reading_text(effects, len(plan.seeds), seconds), seconds)


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


# --------------------------------------------------------------------------- the reading


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _tokens(n: float) -> str:
    if n == 0:
        return "0"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _verdict(shown: bool) -> str:
    return "held" if shown else "did not hold"


def _because(*reasons: tuple[bool, str]) -> str:
    """ " (a; b)": the texts of the reasons that apply, or "" when none does."""
    why = [text for applies, text in reasons if applies]
    return f" ({'; '.join(why)})" if why else ""


def _e1_text(e1: E1) -> str:
    verdict = _verdict(e1.shown)
    return (
        f"E1 {verdict}: vision-only tuning {'lost' if e1.drop > 0 else 'changed'} language accuracy "
        f"{_pct(e1.stage1_language)} -> {_pct(e1.vision_only_language)} against the stage-1 model."
    )


def _e2_text(e2: E2) -> str:
    lo = e2.language_only
    return (
        f"E2 {_verdict(e2.shown)}: the 12.5% vision mixture scored "
        f"{_pct(e2.language)} language (stage 1: {_pct(e2.stage1_language)}) / {_pct(e2.vision)} vision "
        f"against vision-only's {_pct(e2.vision_only_vision)} vision"
        + _because(
            (not e2.keeps_language, "its language fell more than the margin"),
            (not e2.matches_vision, "its vision stayed below vision-only"),
        )
        + (f"; language-only scored {_pct(lo.language)} / {_pct(lo.vision)}." if lo.language is not None else ".")
    )


def _e3_text(e3: E3) -> str:
    if e3.shown:
        assert e3.alpha is not None  # shown implies a pick
        text = (
            f"E3 held: merging the pretrained LLM back at alpha {e3.alpha:g} recovered language "
            f"{_pct(e3.vision_only_language)} -> {_pct(e3.language)} while vision stayed "
            f"{_pct(e3.vision)} (vision-only {_pct(e3.vision_only_vision)}); at alpha {e3.best_alpha:g} "
            f"language reached {_pct(e3.best_language)} with vision {_pct(e3.best_vision)}"
        )
    else:
        text = (
            f"E3 did not hold: no merge alpha raised language by the margin over vision-only's "
            f"{_pct(e3.vision_only_language)} while keeping its vision (best language {_pct(e3.best_language)} "
            f"at alpha {e3.best_alpha:g}, vision {_pct(e3.best_vision)})"
        )
    if not e3.meaningful:
        text += " (E1 did not show, so there was little language to recover)"
    return text + "."


def _e4_text(e4: E4) -> str:
    text = (
        f"E4 {_verdict(e4.shown)}: language-only tuning, with no image in its stage-2 data, "
        f"{'lifted' if e4.lift > 0 else 'moved'} vision {_pct(e4.stage1_vision)} -> {_pct(e4.language_only_vision)} "
        f"({100 * e4.lift:+.1f}) over the stage-1 model"
    )
    if e4.chance is not None:
        text += f"; answering a word of the right kind without reading the image scores {_pct(e4.chance)}"
    if e4.stage1_probe is not None and e4.language_only_probe is not None:
        text += (
            f"; asked in the base phrasing stage 1 was aligned on, the same images get {_pct(e4.stage1_probe)} "
            f"from the stage-1 model and {_pct(e4.language_only_probe)} after language-only tuning"
        )
    if e4.vision_only_vision is not None:
        text += f"; vision-only, trained on the image questions, {_pct(e4.vision_only_vision)}"
    if not e4.lifts:
        text += " (the instruction phrasing it learned on text did not carry over to questions about images)"
    elif not e4.reads_images:
        text += " (a lift to the guessing level: the answer's form carried over, reading the image did not)"
    return text + "."


def _e5_text(e5: E5) -> str:
    text = (
        f"E5 {_verdict(e5.shown)}: the {VARIANTS[e5.variant].label} run reached {_pct(e5.vision)} vision with "
        f"{_tokens(e5.tokens)} stage-2 tokens, vision-only {_pct(e5.vision_only_vision)} with "
        f"{_tokens(e5.vision_only_tokens)} ({e5.token_ratio:.1f}x the tokens)"
    )
    if e5.seconds is not None and e5.vision_only_seconds is not None:
        text += f"; training took {e5.seconds:.0f} s against {e5.vision_only_seconds:.0f} s"
    return (
        text
        + _because(
            (not e5.reaches, "its vision stayed below vision-only's"),
            (not e5.fewer_tokens, "it did not use fewer tokens"),
        )
        + "."
    )


def _e6_text(e6: E6) -> str:
    return (
        f"E6 {_verdict(e6.shown)}: vision-only tuning with Wings' learners scored {_pct(e6.language)} language / "
        f"{_pct(e6.vision)} vision against plain vision-only's {_pct(e6.vision_only_language)} / "
        f"{_pct(e6.vision_only_vision)}"
        + _because(
            (not e6.equal_vision, "its vision was not within the margin of vision-only's"),
            (not e6.keeps_language, "its language was not above vision-only's by the margin"),
        )
        + "."
    )


def reading_text(effects: Effects, n_seeds: int, seconds: float) -> str:
    """One paragraph: which effects held in this run, with the numbers that decide it."""
    over = f"mean over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    parts = [f"Reading ({over}; a score counts as moved beyond {100 * effects.margin:.0f} points):"]
    texts = (_e1_text, _e2_text, _e3_text, _e4_text, _e5_text, _e6_text)
    for (_, effect), text in zip(effects.items(), texts, strict=True):
        if effect is not None:
            parts.append(text(effect))
    if effects.missing:
        parts.append(f"Not measured in this run: {', '.join(effects.missing)}.")
    parts.append(f"Wall time {seconds / 60:.1f} min.")
    return " ".join(parts)


# --------------------------------------------------------------------------- tables, plot, files


def _cell(stat: Stat | None) -> str:
    if not stat:
        return "-"
    if stat.n == 1:
        return f"{100 * stat.mean:.1f}"
    return f"{100 * stat.mean:.1f} [{100 * stat.min:.1f}-{100 * stat.max:.1f}]"


def _cost(row: Row) -> tuple[str, str]:
    """The table's cost cells: mean training tokens of the model's own stage, as text + image, and the
    trainer's seconds; "-" for merges (no training)."""
    if row.text_tokens is None or row.image_tokens is None:
        return "-", "-"
    tokens = f"{_tokens(row.text_tokens.mean)} + {_tokens(row.image_tokens.mean)}"
    return tokens, f"{row.train_seconds.mean:.0f}" if row.train_seconds else "-"


def lab_table(summary: LabSummary) -> str:
    """Markdown table: language and vision accuracy (%) per row, mean [min-max] over seeds, what its
    training cost (tokens text + image, seconds), and per-seed values."""
    seeds = [r.seed for r in summary.seeds]
    probed = any(r.probe for r in summary.rows)  # the probe column only where a probe was run
    head = ["model", "language", "vision", *(["vision, base phrasing"] if probed else [])]
    head += ["training tokens (text + image)", "train s"]
    if len(seeds) > 1:
        head += [f"seed {s} (lang / vis)" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for row in summary.rows:
        if not row.language and not row.vision:
            continue
        cells = [
            row.label,
            _cell(row.language),
            _cell(row.vision),
            *([_cell(row.probe)] if probed else []),
            *_cost(row),
        ]
        if len(seeds) > 1:
            cells += [f"{_pct(lang)} / {_pct(vis)}" for lang, vis in row.per_seed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timings_table(summary: LabSummary) -> str:
    """Markdown table: seconds per stage and seed (stages in the order they ran)."""
    seeds = summary.seeds
    stages: list[str] = []
    for r in seeds:
        stages.extend(k for k in r.timings if k not in stages)
    lines = ["| stage | " + " | ".join(f"seed {r.seed}" for r in seeds) + " |", "| --- |" + " ---: |" * len(seeds)]
    for st in stages:
        lines.append(f"| {st} | " + " | ".join(f"{r.timings.get(st, 0):.1f}" for r in seeds) + " |")
    lines.append("| **seed total** | " + " | ".join(f"{r.seconds:.1f}" for r in seeds) + " |")
    return "\n".join(lines)


def lab_markdown(summary: LabSummary, table: str) -> str:
    """lab.md: the table, the reading, the plots and the time per stage."""
    return (
        "# mlan lab\n\nAccuracy (%) on held-out questions: language = mean of the four P1 tasks (base phrasing), "
        "vision = questions about images in the instruction formats (short answer, yes/no, multiple choice); "
        "[min-max] over seeds. Training tokens are those of the model's own stage (pretraining, stage 1 or "
        "stage 2), message text + image tokens, over every pass of its mixture.\n\n"
        f"{table}\n\n## Reading\n\n{summary.reading}\n\n"
        "![language against vision](lab.png)\n\n![accuracy against training tokens](lab_tokens.png)\n\n"
        f"## Time per stage (s)\n\n{timings_table(summary)}\n"
    )


def plot_lab(summary: LabSummary, path: Path) -> None:
    """Language against vision accuracy: each variant a point (range over seeds as error bars),
    the merge sweep a curve from the vision-only model (alpha 0) towards the pretrained LLM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))

    def point(row: Row) -> tuple[Stat, Stat] | None:
        return (row.language, row.vision) if row.language and row.vision else None

    # Colours by position in the table, so a variant keeps its colour whichever rows are present.
    for i, row in enumerate(summary.rows):
        p = point(row)
        if row.alpha is not None or row.name == PRETRAINED_LLM or p is None:
            continue
        lang, vis = p
        ax.errorbar(
            100 * vis.mean, 100 * lang.mean,
            xerr=[[100 * (vis.mean - vis.min)], [100 * (vis.max - vis.mean)]],
            yerr=[[100 * (lang.mean - lang.min)], [100 * (lang.max - lang.mean)]],
            fmt="o", ms=8, capsize=3, color=f"C{i % 10}", label=row.label,
        )  # fmt: skip
    # The sweep starts at the vision-only model itself (alpha 0), then each merge alpha in order.
    curve = [r for r in summary.rows if r.name == MERGE_BASE] + [r for r in summary.rows if r.alpha is not None]
    pts = [(p, r.alpha or 0.0) for r in curve if (p := point(r))]
    if len(pts) > 1:
        xs = [100 * vis.mean for (_, vis), _ in pts]
        ys = [100 * lang.mean for (lang, _), _ in pts]
        ax.plot(xs, ys, "-", color="0.3", lw=1.5, marker="s", ms=5, label="merge sweep (vision only + LLM)")
        for x, y, (_, a) in zip(xs, ys, pts, strict=True):
            ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    llm = next((r.language for r in summary.rows if r.name == PRETRAINED_LLM), None)
    if llm:
        ax.axhline(100 * llm.mean, color="0.6", ls=":", lw=1, label="pretrained LLM (language)")
    ax.set_xlabel("vision accuracy (%) — held-out scene questions")
    ax.set_ylabel("language accuracy (%) — held-out P1 tasks")
    n = len(summary.seeds)
    ax.set_title(
        f"mlan lab: language vs vision ({'mean over ' + str(n) + ' seeds, bars: range' if n > 1 else 'one seed'})"
    )
    ax.set_xlim(-2, 110)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tokens(summary: LabSummary, path: Path) -> None:
    """E5's picture: vision and language accuracy against the stage-2 training tokens (text + image) of
    each variant, the stage-1 model at zero; range over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for i, row in enumerate(summary.rows):
        if row.alpha is not None or row.name == PRETRAINED_LLM:
            continue
        x = 0.0 if row.name == STAGE1 else row.tokens
        if x is None:
            continue
        for ax, stat in zip(axes, (row.vision, row.language), strict=True):
            if stat is None:
                continue
            ax.errorbar(
                x / 1e3, 100 * stat.mean, yerr=[[100 * (stat.mean - stat.min)], [100 * (stat.max - stat.mean)]],
                fmt="o", ms=8, capsize=3, color=f"C{i % 10}", label=row.label,
            )  # fmt: skip
    for ax, what in zip(axes, ("vision (held-out scene questions)", "language (held-out P1 tasks)"), strict=True):
        ax.set_xlabel("stage-2 training tokens, text + image (thousands)")
        ax.set_ylabel(f"{what} accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    n = len(summary.seeds)
    fig.suptitle(
        f"mlan lab: accuracy against training tokens ({'mean over ' + str(n) + ' seeds' if n > 1 else 'one seed'})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, summary: LabSummary) -> LabReport:
    """Write `lab.png`, `lab_tokens.png`, `lab.md` and (last: a folder without it is an unfinished lab)
    `lab.json` to `out`."""
    table = lab_table(summary)
    plot_lab(summary, out / "lab.png")
    plot_tokens(summary, out / "lab_tokens.png")
    atomic_write_text(out / "lab.md", lab_markdown(summary, table))
    data = summary.to_json()
    atomic_write_json(out / "lab.json", data)
    files = {k: str(out / f"lab.{k}") for k in ("json", "md", "png")} | {"tokens_png": str(out / "lab_tokens.png")}
    return LabReport(out=out, data=data, table=table, reading=summary.reading, files=files, summary=summary)
