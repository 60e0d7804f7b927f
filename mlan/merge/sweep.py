"""Sweeping alpha (and density): merge each point, evaluate it on language and vision suites, pick the best.

Merging the original LLM back trades vision skill for language skill as alpha grows (Ratzlaff et
al. report task arithmetic at alpha 0.1 lifting GSM8K and even some vision benchmarks). The sweep
makes that trade-off visible: a table and a curve of every suite's tasks, the language and vision
means, and the point that is best by the chosen criterion. Each merged model is evaluated as soon
as it is written and deleted afterwards unless asked to keep it, so a sweep needs the disk of one
merged model at a time.

Under several processes (`accelerate launch -m mlan merge ... --suite ...`) the main process merges
each point, and every process evaluates it with its share of each task's questions
(mlan.evaluate.parallel); only the main process writes. The report is the one-process report.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlan.config.merge import MergeConfig
from mlan.errors import MlanError
from mlan.evaluate import EvalRun, load_suite, parallel, run_evaluation
from mlan.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir
from mlan.kinds import default_device
from mlan.merge.streaming import default_out, merge_models, prepare

log = logging.getLogger(__name__)

MODALITY_CRITERIA = ("mean", "language", "vision")
# evaluate(model_dir, eval_out_dir) -> list of (suite, task, modality, value); the default runs
# mlan.evaluate.run_evaluation on the config's suites.
Evaluator = Callable[[Path, Path], list[tuple[str, str, str, float]]]


@dataclass
class SweepPoint:
    """One merged model of the sweep and its scores (fractions 0..1)."""

    alpha: float
    density: float
    scores: dict[str, float] = field(default_factory=dict)
    """Per task (`suite/task`) and the means `language`, `vision`, `mean` where they have tasks."""
    score: float = math.nan
    """The criterion's value."""
    eligible: bool = True
    """False when excluded by `max_vision_drop`."""
    model_dir: str | None = None
    """Where the merged model is kept (None when deleted after evaluation)."""
    seconds: float = 0.0


@dataclass
class SweepReport:
    """What `sweep_merge` produced: every point, the best one, and where the report files are."""

    out: Path
    method: str
    criterion: str
    columns: list[str]
    rows: list[SweepPoint]
    best: SweepPoint
    files: dict[str, str] = field(default_factory=dict)


def _check_criterion(criterion: str, suites) -> None:
    tasks = {t.name for s in suites for t in s.tasks} | {f"{s.name}/{t.name}" for s in suites for t in s.tasks}
    if criterion in MODALITY_CRITERIA or criterion in tasks:
        if criterion in ("language", "vision") and not any(s.modality == criterion for s in suites):
            raise MlanError(f"sweep.criterion {criterion}: none of the suites has {criterion} tasks")
        return
    raise MlanError(
        f"sweep.criterion {criterion!r}: expected mean, language, vision or a task of the suites "
        f"({', '.join(sorted(t.name for s in suites for t in s.tasks))})"
    )


def _scores(results: list[tuple[str, str, str, float]]) -> dict[str, float]:
    scores: dict[str, float] = {}
    by_modality: dict[str, list[float]] = {}
    for suite, task, modality, value in results:
        scores[f"{suite}/{task}"] = value
        by_modality.setdefault(modality, []).append(value)
    for modality, values in sorted(by_modality.items()):
        scores[modality] = sum(values) / len(values)
    everything = [v for vs in by_modality.values() for v in vs]
    if everything:
        scores["mean"] = sum(everything) / len(everything)
    return scores


def _criterion_value(scores: dict[str, float], criterion: str) -> float:
    if criterion in scores:
        return scores[criterion]
    matches = [v for k, v in scores.items() if k.split("/")[-1] == criterion]
    return sum(matches) / len(matches) if matches else math.nan


def _default_evaluator(config: MergeConfig, suites) -> Evaluator:
    def evaluate(model_dir: Path, eval_dir: Path) -> list[tuple[str, str, str, float]]:
        run = EvalRun(models=[str(model_dir)], limit=config.sweep.limit, device=config.sweep.device, out=str(eval_dir))
        report = run_evaluation(run, suites=suites)
        return [(r.suite, r.task, r.modality, r.value) for r in report.models[0].results]

    return evaluate


def sweep_merge(config: MergeConfig, overwrite: bool = False, evaluate: Evaluator | None = None) -> SweepReport:
    """Merge and evaluate every (alpha, density) point of `config`; write a trade-off report.

    Writes to `config.out`: `sweep.json` (every point's scores and the best), `sweep.md` (the
    table), `sweep.png` (scores against alpha, one line per density), `eval/<point>/` (each
    point's evaluation results) and, with `sweep.keep_merged`, `models/<point>/`. The best point
    maximises `sweep.criterion` among eligible points; ties go to the smaller alpha (the model
    closer to the multimodal one). `evaluate(model_dir, eval_dir)` replaces the default
    evaluation (`mlan.evaluate.run_evaluation` on `sweep.suites`) when given.
    """
    out = Path(config.out) if config.out else default_out(config)
    check_output_dir(out, overwrite)
    settings = config.sweep
    suites = []
    if evaluate is None:
        if not settings.suites:
            raise MlanError("sweep: no evaluation suite (pass --suite NAME, e.g. --suite quickstart)")
        suites = [load_suite(s) for s in settings.suites]
        _check_criterion(settings.criterion, suites)
        evaluate = _default_evaluator(config, suites)
    points = config.points
    if settings.max_vision_drop is not None and not any(a == 0 for a, _ in points):
        raise MlanError("sweep.max_vision_drop: needs an alpha-0 point to measure the drop against (add 0 to --alpha)")
    prepare(config)  # every input check before the first merge
    procs = parallel.current(cuda=(settings.device or default_device()).startswith("cuda"))
    rows: list[SweepPoint] = []
    with atomic_dir(out, overwrite=overwrite) if procs.main else nullcontext() as tmp:
        # The main process's scratch folder, where every process reads the merged models.
        tmp = Path(procs.broadcast(str(tmp) if procs.main else None))
        for i, (alpha, density) in enumerate(points):
            t0 = time.perf_counter()
            tag = f"a{alpha:g}-d{density:g}"
            model_dir = tmp / "models" / tag
            point_cfg = config.model_copy(update={"alpha": alpha, "density": density, "out": str(model_dir)})
            if procs.main:
                merge_models(point_cfg)
            procs.barrier()  # the merged model is written before anyone loads it
            results = evaluate(model_dir, tmp / "eval")
            row = SweepPoint(alpha=alpha, density=density, scores=_scores(results))
            row.score = _criterion_value(row.scores, settings.criterion)
            if settings.keep_merged:
                row.model_dir = str(out / "models" / tag)
            elif procs.main:
                shutil.rmtree(model_dir)
            row.seconds = round(time.perf_counter() - t0, 1)
            rows.append(row)
            log.info(
                "point %d/%d: alpha %g, density %g: %s = %.3f",
                i + 1,
                len(points),
                alpha,
                density,
                settings.criterion,
                row.score,
            )
        if settings.max_vision_drop is not None:
            # Alpha 0 is the multimodal model itself, whatever the density: the reference for the drop.
            ref = next(r for r in rows if r.alpha == 0)
            if "vision" not in ref.scores:
                raise MlanError("sweep.max_vision_drop: the suites have no vision tasks")
            for r in rows:
                r.eligible = r.scores.get("vision", -math.inf) >= ref.scores["vision"] - settings.max_vision_drop
        if not procs.main:
            best = sorted(eligible_rows(rows, settings.criterion), key=lambda r: (-r.score, r.alpha, r.density))[0]
            return SweepReport(out, config.method, settings.criterion, _columns(rows), rows, best)
        if not settings.keep_merged:
            shutil.rmtree(tmp / "models", ignore_errors=True)
        eligible = eligible_rows(rows, settings.criterion)
        best = sorted(eligible, key=lambda r: (-r.score, r.alpha, r.density))[0]
        columns = _columns(rows)
        report = SweepReport(
            out=out, method=config.method, criterion=settings.criterion, columns=columns, rows=rows, best=best
        )
        atomic_write_text(tmp / "sweep.md", sweep_table(report) + "\n")
        _plot(report, tmp / "sweep.png")
        report.files = {"json": str(out / "sweep.json"), "table": str(out / "sweep.md"), "plot": str(out / "sweep.png")}
        atomic_write_json(tmp / "sweep.json", _to_json(report, config))
    return report


def eligible_rows(rows: list[SweepPoint], criterion: str) -> list[SweepPoint]:
    eligible = [r for r in rows if r.eligible and not math.isnan(r.score)]
    if not eligible:
        raise MlanError(f"sweep: no point has a {criterion!r} score within the constraints")
    return eligible


def _columns(rows: list[SweepPoint]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r.scores if k not in keys)
    tasks = [k for k in keys if "/" in k]
    means = [k for k in ("language", "vision", "mean") if k in keys]
    return tasks + means


def sweep_table(report: SweepReport) -> str:
    """The trade-off table in markdown (scores in percent; the best row marked)."""
    head = ["alpha", "density", *report.columns, f"criterion ({report.criterion})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in report.rows:
        cells = [f"{r.alpha:g}", f"{r.density:g}"]
        cells += [f"{100 * r.scores[c]:.1f}" if c in r.scores else "-" for c in report.columns]
        mark = " **best**" if r is report.best else ("" if r.eligible else " (excluded)")
        cells.append(f"{100 * r.score:.1f}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _to_json(report: SweepReport, config: MergeConfig) -> dict[str, Any]:
    return {
        "method": report.method,
        "sparsify_scope": config.sparsify_scope,
        "criterion": report.criterion,
        "multimodal": str(config.multimodal),
        "original": str(config.original),
        "suites": list(config.sweep.suites),
        "limit": config.sweep.limit,
        "columns": report.columns,
        "points": [asdict(r) for r in report.rows],
        "best": {"alpha": report.best.alpha, "density": report.best.density, "score": report.best.score},
        "merge_best": (
            f"mlan merge --multimodal {config.multimodal} --original {config.original} --method {config.method} "
            f"--alpha {report.best.alpha:g}"
            + (f" --density {report.best.density:g}" if report.best.density != 1 else "")
            + (" --sparsify-scope global" if config.sparsify_scope == "global" else "")
            + (f" --seed {config.seed}" if report.method.startswith("dare") else "")
        ),
    }


def _plot(report: SweepReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    series = [c for c in ("language", "vision") if c in report.columns] or [c for c in report.columns if "/" in c]
    densities = list(dict.fromkeys(r.density for r in report.rows))
    styles = ["-", "--", ":", "-."]
    colors = {name: f"C{i}" for i, name in enumerate(series)}
    for j, d in enumerate(densities):
        pts = sorted((r for r in report.rows if r.density == d), key=lambda r: r.alpha)
        for name in series:
            label = name if len(densities) == 1 else f"{name}, density {d:g}"
            ys = [100 * r.scores.get(name, math.nan) for r in pts]
            ax.plot([r.alpha for r in pts], ys, styles[j % 4], color=colors[name], marker="o", label=label)
    b = report.best
    for name in series:
        ax.plot([b.alpha], [100 * b.scores.get(name, math.nan)], "*", color=colors[name], markersize=14)
    ax.axvline(b.alpha, color="grey", lw=0.8)
    ax.annotate(
        f"best by {report.criterion}: alpha {b.alpha:g}, density {b.density:g}",
        (b.alpha, ax.get_ylim()[1]),
        fontsize=8,
        va="top",
    )
    ax.set_xlabel("alpha (weight of the original LLM's task vector)")
    ax.set_ylabel("score (%)")
    ax.set_title(f"Merging the original LLM back ({report.method})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
