"""Results files, readable tables, side-by-side comparisons with deltas, and a PNG chart."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


@dataclass
class ModelResults:
    """All task results of one model."""

    label: str
    model: str
    results: list[TaskResult]
    seen_tasks: list[str] = field(default_factory=list)
    results_file: Path | None = None

    def get(self, suite: str, task: str) -> TaskResult | None:
        """The result of one task, if it was evaluated."""
        return next((r for r in self.results if r.suite == suite and r.task == task), None)


@dataclass
class ComparisonRow:
    """One row of a comparison: a task, a suite average or a modality average."""

    kind: str  # "task", "suite", "modality"
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
    }
    atomic_write_text(out / "results.md", results_table(mr) + "\n")
    mr.results_file = atomic_write_json(out / "results.json", data)
    return mr.results_file


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def results_table(mr: ModelResults) -> str:
    """A markdown table of one model's results (scores in percent; seen tasks marked)."""
    lines = [
        f"{mr.label} ({mr.model})",
        "",
        "| suite | task | metric | score | ± | n | seen |",
        "| --- | --- | --- | ---: | ---: | ---: | :---: |",
    ]
    for r in mr.results:
        lines.append(
            f"| {r.suite} | {r.task} | {r.metric} | {_pct(r.value)} | {_pct(r.stderr)} | {r.n} | {'seen' if r.seen else ''} |"
        )
    for suite in dict.fromkeys(r.suite for r in mr.results):
        vals = [r.value for r in mr.results if r.suite == suite]
        lines.append(f"| {suite} | **average** | | {_pct(sum(vals) / len(vals))} | | | |")
    return "\n".join(lines)


def _mean(xs: list[float | None]) -> float | None:
    xs2 = [x for x in xs if x is not None]
    return sum(xs2) / len(xs2) if xs2 and len(xs2) == len(xs) else None


def compare(models: list[ModelResults], reference: str | None) -> list[ComparisonRow]:
    """Rows of a side-by-side comparison: every task, each suite's average, then the language and
    vision averages, each with deltas against the reference model (None: no deltas)."""
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
    for suite, task, metric, _ in keys:
        values, seen = {}, {}
        for m in models:
            r = m.get(suite, task)
            values[m.label] = r.value if r else None
            seen[m.label] = bool(r and r.seen)
        rows.append(row("task", suite, task, metric, values, seen))
    for suite in dict.fromkeys(k[0] for k in keys):
        sub = [r for r in rows if r.kind == "task" and r.suite == suite]
        values = {lab: _mean([r.values[lab] for r in sub]) for lab in labels}
        rows.append(row("suite", suite, "average", "", values, dict.fromkeys(labels, False)))
    for modality in ("language", "vision"):
        idx = [i for i, k in enumerate(keys) if k[3] == modality]
        if not idx:
            continue
        values = {lab: _mean([rows[i].values[lab] for i in idx]) for lab in labels}
        rows.append(row("modality", "", f"{modality} average", "", values, dict.fromkeys(labels, False)))
    return rows


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
        name = r.name if r.kind == "task" else f"**{r.name}**"
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

    rows = [r for r in report.comparison if r.kind in ("task", "modality")]
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
