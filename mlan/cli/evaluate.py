"""`mlan eval`: the eight-task language suite (lm-eval), MLAN's unseen suites, side-by-side comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, console
from mlan.errors import MlanError


def _split_csv(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def evaluate(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model folders or hub ids (LLaVA or plain causal LM); default: the newest run under runs/."
        ),
    ] = None,
    unseen: Annotated[bool, typer.Option("--unseen", help="Add MLAN's unseen language and vision suites.")] = False,
    suite: Annotated[
        list[str] | None,
        typer.Option("--suite", "-s", help="Suite name or YAML file (repeatable); replaces the default eight_task."),
    ] = None,
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", "-t", help="Only these tasks (comma-separated or repeated).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="At most N questions per task.")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Local data for every task: DIR/<task>/<split>.jsonl (offline).")
    ] = None,
    data: Annotated[
        list[str] | None, typer.Option("--data", metavar="TASK=FILE", help="Local data file for one task (repeatable).")
    ] = None,
    image_dir: Annotated[
        Path | None, typer.Option("--image-dir", help="Folder with the images named in local rows.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Results folder (per-task cache inside: reruns resume).")] = Path(
        "runs/eval"
    ),
    reference: Annotated[
        str | None, typer.Option("--reference", "-r", help="Model (path or label) to compute deltas against.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Questions per forward pass.")] = 8,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (the checkpoint's), bfloat16, float16 or float32.")] = "auto",
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore cached task results and recompute them.")] = False,
    overrides: Overrides = None,
) -> None:
    """Evaluate models on the eight-task language suite (lm-eval standard tasks) and, with --unseen,
    MLAN's unseen language and vision suites (zero-shot generate-then-match). Several models are
    compared side by side with deltas against --reference (or the first), plus a PNG chart; tasks
    a model saw in training (its mixture_manifest.json) are marked.

    Example: mlan eval runs/base-llm runs/mlan-tuned --reference runs/base-llm --unseen --limit 100
    """
    from mlan.evaluate import DEFAULT_SUITE, UNSEEN_SUITES, load_suite, run_evaluation

    if not models:
        from mlan.runs import latest_run

        latest = latest_run()
        if latest is None:
            raise MlanError(
                "no model given and no finished run recorded under runs/: name one, "
                "e.g. `mlan eval runs/<run>` or a hub id, or train one with `mlan sft RECIPE`"
            )
        models = [str(latest)]
    names = list(suite) if suite else [DEFAULT_SUITE]
    if unseen:
        names += [s for s in UNSEEN_SUITES if s not in names]
    suites = [load_suite(n, overrides) for n in names]
    data_files = {}
    for item in data or []:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise MlanError(f"--data {item!r}: expected TASK=FILE, e.g. --data boolq=data/boolq.jsonl")
        data_files[task.strip()] = path.strip()
    known = {t.name for s in suites for t in s.tasks}
    for task in data_files:
        if task not in known:
            raise MlanError(f"--data {task}=...: no task {task!r} in the chosen suites ({', '.join(sorted(known))})")

    con = console()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=True,
    ) as bar:
        pid = bar.add_task("evaluating", total=None)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(pid, description=label, completed=done, total=total)

        report = run_evaluation(
            models,
            suites,
            tasks=_split_csv(tasks) or None,
            limit=limit,
            data_dir=data_dir,
            data_files=data_files or None,
            image_dir=image_dir,
            out_dir=out,
            reference=reference,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            fresh=fresh,
            progress=progress,
        )
    con.print(report.table(), markup=False)
    for m in report.models:
        con.print(f"results: [bold]{m.results_file}[/bold]")
    if report.comparison_file:
        con.print(f"comparison: [bold]{report.comparison_file}[/bold], chart: [bold]{report.chart_file}[/bold]")
