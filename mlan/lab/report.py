"""The lab's report: the reading in words, the tables and the files.

`summarise` reads the seeds' typed results (rows and effects: `mlan.lab.reading`), `reading_text` says
which effects held in one paragraph, and `write_report` writes `lab.png`, `lab_tokens.png` (drawn by
`mlan.lab.plots`), `lab.md` and (last) `lab.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan.io import atomic_write_json, atomic_write_text
from mlan.lab.plan import VARIANTS, LabPlan
from mlan.lab.plots import plot_lab, plot_tokens
from mlan.lab.reading import E1, E2, E3, E4, E5, E6, Effects, LabSummary, Row, Stat, read_effects, summary_rows
from mlan.lab.results import SeedResult


@dataclass
class LabReport:
    """What `run_lab` produced: every score, the summary over seeds, the reading of the effects."""

    out: Path
    data: dict[str, Any]  # lab.json
    table: str
    reading: str
    files: dict[str, str]
    summary: LabSummary


def summarise(plan: LabPlan, results: list[SeedResult], seconds: float) -> LabSummary:
    """Every score per seed, the mean and range over seeds per row, and the effects read from them."""
    rows = summary_rows(plan, results)
    chance = Stat.of([r.vision_chance for r in results])
    effects = read_effects(rows, chance=chance.mean if chance else None)
    return LabSummary(plan, results, rows, effects, reading_text(effects, len(plan.seeds), seconds), seconds)


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


# --------------------------------------------------------------------------- tables and files


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
