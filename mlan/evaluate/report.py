"""Results files, readable tables, side-by-side comparisons with deltas, and a PNG chart."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlan.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """One task's headline score for one model (values are fractions, 0..1)."""

    task: str
    suite: str
    metric: str
    value: float
    stderr: float | None
    n: int
    modality: str
    seen: bool
    engine: str = ""
    source: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    extraction: str = ""
    """How answers were read: `mlan` or `lenient` (generate engine), `lm_eval` (lm-eval's own filters)."""
    extra: dict[str, float] = field(default_factory=dict)
    """The task's `also_report` metrics, shown beside the headline one."""
    prompt_style: str | None = None
    """The generate engine's prompt style when it is not the suite's: `chat` for a family whose images
    only its own chat template places (LLaVA-OneVision, Qwen2.5-VL on a vision suite)."""
    backend: str = ""
    """The model backend of an lm-eval task: `mlan` (mlan.evaluate.backend) or `lm_eval` (lm-eval's HFLM)."""
    tokens: dict[str, int] = field(default_factory=dict)
    """mlan backend: tokens run through the model over all processes (`computed`), those lm-eval's HFLM runs
    for the same requests (`lm_eval`), and the `questions` they served."""


@dataclass
class AverageResult:
    """A named average of one suite (its `averages`): None unless every task in it was evaluated."""

    name: str
    suite: str
    tasks: list[str]
    value: float | None
    missing: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class ModelResults:
    """All task results of one model."""

    label: str
    model: str
    results: list[TaskResult]
    seen_tasks: list[str] = field(default_factory=list)
    results_file: Path | None = None
    averages: list[AverageResult] = field(default_factory=list)
    # Where the uncached tasks ran: {processes, devices (one per process; None: all from the cache), engine}.
    run: dict[str, Any] = field(default_factory=dict)

    def get(self, suite: str, task: str) -> TaskResult | None:
        """The result of one task, if it was evaluated."""
        return next((r for r in self.results if r.suite == suite and r.task == task), None)


@dataclass
class ComparisonRow:
    """One row of a comparison: a task, a suite average or a modality average."""

    kind: str  # "task", "metric" (a task's also_report metric), "average" (named), "suite", "modality"
    suite: str
    name: str
    metric: str
    values: dict[str, float | None]
    deltas: dict[str, float | None]
    seen: dict[str, bool]


@dataclass
class EvalReport:
    """What `run_evaluation` produced: per-model results and, for several models, a comparison."""

    models: list[ModelResults]
    out_dir: Path
    reference: str | None = None
    comparison: list[ComparisonRow] = field(default_factory=list)
    comparison_file: Path | None = None
    chart_file: Path | None = None

    def table(self) -> str:
        """The comparison table when there are several models, else the one model's results table."""
        if len(self.models) > 1 or self.comparison:
            return comparison_table(self)
        return results_table(self.models[0]) if self.models else ""


def write_model_results(mr: ModelResults, out: Path) -> Path:
    """`results.json` (machine-readable) and `results.md` (the table) for one model."""
    data = {
        "model": mr.model,
        "label": mr.label,
        "seen_tasks": mr.seen_tasks,
        "results": [asdict(r) for r in mr.results],
        "averages": [asdict(a) for a in mr.averages],
        "run": mr.run,
    }
    atomic_write_text(out / "results.md", results_table(mr) + "\n")
    mr.results_file = atomic_write_json(out / "results.json", data)
    return mr.results_file


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def named_averages(results: list[TaskResult], suites) -> list[AverageResult]:
    """Each suite's named averages (`EvalSuite.averages`) over these results' headline values."""
    out = []
    for suite in suites:
        for a in suite.averages:
            got = {r.task: r.value for r in results if r.suite == suite.name}
            missing = [t for t in a.tasks if t not in got]
            value = None if missing else sum(got[t] for t in a.tasks) / len(a.tasks)
            out.append(AverageResult(a.name, suite.name, list(a.tasks), value, missing, a.description))
    return out


def results_table(mr: ModelResults) -> str:
    """A markdown table of one model's results (scores in percent; seen tasks marked), then each
    suite's named averages (or, for a suite without any, the average of all its tasks)."""
    lines = [
        f"{mr.label} ({mr.model})",
        "",
        "| suite | task | metric | score | ± | n | seen |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for r in mr.results:
        seen = "seen" if r.seen else ""
        lines.append(f"| {r.suite} | {r.task} | {r.metric} | {_pct(r.value)} | {_pct(r.stderr)} | {r.n} | {seen} |")
        lines += [f"| {r.suite} | {r.task} | {m} | {_pct(v)} | | {r.n} | {seen} |" for m, v in r.extra.items()]
    named = {a.suite for a in mr.averages}
    for suite in dict.fromkeys(r.suite for r in mr.results):
        if suite in named:
            for a in (a for a in mr.averages if a.suite == suite):
                lines.append(f"| {suite} | **{a.name}** ({', '.join(a.tasks)}) | | {_pct(a.value)} | | | |")
            continue
        vals = [r.value for r in mr.results if r.suite == suite]
        lines.append(f"| {suite} | **average** | | {_pct(sum(vals) / len(vals))} | | | |")
    return "\n".join(lines)


def _mean(xs: list[float | None]) -> float | None:
    xs2 = [x for x in xs if x is not None]
    return sum(xs2) / len(xs2) if xs2 and len(xs2) == len(xs) else None


def compare(models: list[ModelResults], reference: str | None) -> list[ComparisonRow]:
    """Rows of a side-by-side comparison: every task (and its `also_report` metrics), each suite's
    named averages (or its plain average), then the language and vision averages over all tasks,
    each with deltas against the reference model (None: no deltas)."""
    labels = [m.label for m in models]
    ref = reference if reference in labels else None
    keys: list[tuple[str, str, str, str]] = []  # suite, task, metric, modality
    for m in models:
        for r in m.results:
            k = (r.suite, r.task, r.metric, r.modality)
            if k not in keys:
                keys.append(k)

    def row(kind, suite, name, metric, values, seen):
        deltas = {
            lab: (None if ref is None or lab == ref or v is None or values[ref] is None else v - values[ref])
            for lab, v in values.items()
        }
        return ComparisonRow(kind, suite, name, metric, values, deltas, seen)

    rows: list[ComparisonRow] = []
    unseen = dict.fromkeys(labels, False)
    for suite, task, metric, _ in keys:
        got = {m.label: m.get(suite, task) for m in models}
        seen = {lab: bool(r and r.seen) for lab, r in got.items()}
        rows.append(row("task", suite, task, metric, {lab: r.value if r else None for lab, r in got.items()}, seen))
        for extra in dict.fromkeys(x for r in got.values() if r for x in r.extra):
            values = {lab: r.extra.get(extra) if r else None for lab, r in got.items()}
            rows.append(row("metric", suite, task, extra, values, seen))
    named = {(a.suite, a.name): a for m in models for a in m.averages}
    for suite in dict.fromkeys(k[0] for k in keys):
        if any(s == suite for s, _ in named):
            for name in (n for s, n in named if s == suite):
                values = {m.label: _average_of(m, suite, name) for m in models}
                rows.append(row("average", suite, name, "", values, unseen))
            continue
        sub = [r for r in rows if r.kind == "task" and r.suite == suite]
        values = {lab: _mean([r.values[lab] for r in sub]) for lab in labels}
        rows.append(row("suite", suite, "average", "", values, unseen))
    for modality in ("language", "vision"):
        sub = [r for r, k in zip([r for r in rows if r.kind == "task"], keys, strict=True) if k[3] == modality]
        if not sub:
            continue
        values = {lab: _mean([r.values[lab] for r in sub]) for lab in labels}
        rows.append(row("modality", "", f"{modality} average", "", values, unseen))
    return rows


def _average_of(m: ModelResults, suite: str, name: str) -> float | None:
    return next((a.value for a in m.averages if a.suite == suite and a.name == name), None)


def comparison_table(report: EvalReport) -> str:
    """Markdown: one column per model (score, and Δ against the reference); `*` marks a task that
    model saw in training (its mixture covers the task's dataset)."""
    labels = [m.label for m in report.models]
    ref = report.reference
    head = ["suite", "task"]
    for lab in labels:
        head.append(f"{lab}{' (ref)' if lab == ref else ''}")
        if ref and lab != ref:
            head.append("Δ")
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + " |"]
    for r in report.comparison:
        name = {"task": r.name, "metric": f"{r.name} [{r.metric}]"}.get(r.kind, f"**{r.name}**")
        cells = [r.suite, name]
        for lab in labels:
            cells.append(_pct(r.values[lab]) + ("*" if r.seen.get(lab) else ""))
            if ref and lab != ref:
                d = r.deltas[lab]
                cells.append("-" if d is None else f"{100 * d:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if any(any(r.seen.values()) for r in report.comparison):
        lines.append("")
        lines.append("`*` seen in training (the model's mixture covers this dataset): not a zero-shot score.")
    return "\n".join(lines)


def write_comparison(report: EvalReport) -> None:
    """`comparison.json`, `comparison.md` and `comparison.png` in the report's folder."""
    out = report.out_dir
    atomic_write_json(
        out / "comparison.json",
        {
            "reference": report.reference,
            "models": [m.label for m in report.models],
            "rows": [asdict(r) for r in report.comparison],
        },
    )
    report.comparison_file = atomic_write_text(out / "comparison.md", comparison_table(report) + "\n")
    report.chart_file = plot_comparison(report, out / "comparison.png")


def plot_comparison(report: EvalReport, path: Path) -> Path:
    """Grouped bars: one group per task (then the averages), one bar per model; seen tasks hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.comparison if r.kind in ("task", "average", "modality")]
    labels = [m.label for m in report.models]
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2))
    for j, lab in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(rows))]
        ys = [100 * (r.values[lab] or 0.0) for r in rows]
        bars = ax.bar(xs, ys, width, label=lab + (" (ref)" if lab == report.reference else ""))
        for b, r in zip(bars, rows, strict=True):
            if r.seen.get(lab):
                b.set_hatch("//")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [r.name if r.kind == "task" else r.name.replace(" average", "\navg") for r in rows],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        "mlan eval"
        + (f": deltas against {report.reference}" if report.reference else "")
        + " (hatched: seen in training)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def rate_label(label: str, done: int, total: int, t0: float) -> str:
    """A generate task's progress: questions done over all processes, questions per second, time left."""
    elapsed = time.perf_counter() - t0
    if not done or elapsed <= 0:
        return f"{label} ({done}/{total})"
    rate = done / elapsed
    return f"{label} ({done}/{total}, {rate:.1f} q/s, {(total - done) / rate:.0f} s left)"


def write_samples(path: Path, samples: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples))
