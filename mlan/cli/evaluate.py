"""`mlan eval`: the eight-task language suite (lm-eval), MLAN's unseen suites, side-by-side comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, console, task_progress
from mlan.errors import MlanError


def _split_csv(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _data_files(items: list[str]) -> dict[str, str]:
    files = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise MlanError(f"--data {item!r}: expected TASK=FILE, e.g. --data boolq=data/boolq.jsonl")
        files[task.strip()] = path.strip()
    return files


def build_run(models: list[str] | None, flags: dict, overrides: list[str] | None):
    """The `EvalRun` of one `mlan eval` call: a run YAML (a single .yaml argument) or the model
    arguments, then every flag that was given, then `-o` overrides."""
    from mlan.config.base import apply_overrides, read_yaml, validate_config
    from mlan.config.evaluation import EvalRun

    models = list(models or [])
    source = "mlan eval"
    if len(models) == 1 and Path(models[0]).suffix in (".yaml", ".yml") and Path(models[0]).is_file():
        source = models[0]
        data = read_yaml(source)
    else:
        data = {"models": models} if models else {}
    data.update({k: v for k, v in flags.items() if v not in (None, False, [], {})})
    # -o FIELD=VALUE sets the run's field when it has one (limit, out, ...), else every suite's
    # (max_new_tokens, ...: what `mlan eval -o` always set); -o suite.FIELD=VALUE says so explicitly.
    run_fields = set(EvalRun.model_fields)
    run_overrides = [o for o in overrides or [] if o.partition("=")[0].split(".")[0].strip() in run_fields]
    suite_overrides = [o.removeprefix("suite.") for o in overrides or [] if o not in run_overrides]
    data = apply_overrides(data, run_overrides)
    if suite_overrides:
        data["suite_overrides"] = [*data.get("suite_overrides", []), *suite_overrides]
    return validate_config(data, EvalRun, source=source)


# Long only by its Typer signature (one parameter per option); the body is parse -> run -> print.
def evaluate(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model folders or hub ids (LLaVA or plain causal LM), or one run YAML (an EvalRun); "
            "default: the newest run under runs/."
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
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Results folder (per-task cache inside: reruns resume); default runs/eval."),
    ] = None,
    reference: Annotated[
        str | None, typer.Option("--reference", "-r", help="Model (path or label) to compute deltas against.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", min=1, help="Questions per forward pass (default 8).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, ... (default: cuda if available).")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="auto (the checkpoint's, the default), bfloat16, float16 or float32.")
    ] = None,
    device_map: Annotated[
        str | None,
        typer.Option("--device-map", help="auto: spread one model over this machine's GPUs (larger than one GPU)."),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(help="Generation engine of the generate suites: transformers (default) or vllm (GPU)."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Model backend of the eight-task (lm-eval) suite: mlan (default: lm-eval's HFLM, each shared "
            "context computed once, generation batched continuously; same scores) or lm_eval (HFLM itself)."
        ),
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore cached task results and recompute them.")] = False,
    overrides: Overrides = None,
) -> None:
    """Evaluate models on the eight-task language suite (lm-eval standard tasks) and, with --unseen,
    MLAN's unseen language and vision suites (zero-shot generate-then-match). Several models are
    compared side by side with deltas against --reference (or the first), plus a PNG chart; tasks
    a model saw in training (its mixture_manifest.json) are marked.

    The flags and a run YAML build the same config (mlan.evaluate.EvalRun, whose fields the flags
    name); flags win over the file. -o FIELD=VALUE sets a field of the run (e.g. -o limit=20) or,
    when the run has no such field, of every suite (e.g. -o max_new_tokens=16). The results folder
    keeps the run as run.yaml.

    Several processes (`accelerate launch -m mlan eval ...`, `torchrun -m mlan eval ...`) split every
    task's questions and write what one process writes; --device-map auto loads one model over the GPUs
    of this machine; --engine vllm generates the generate suites with vLLM. --backend lm_eval scores the eight-task
    suite with lm-eval's own HFLM instead of mlan's faster backend (the same scores; results.json names the backend).

    Example: mlan eval runs/base-llm runs/mlan-tuned --reference runs/base-llm --unseen --limit 100
    """
    from mlan.evaluate import run_evaluation

    flags = {
        "unseen": unseen,
        "suites": list(suite or []),
        "tasks": _split_csv(tasks) or None,
        "limit": limit,
        "data_dir": str(data_dir) if data_dir else None,
        "data": _data_files(data or []),
        "image_dir": str(image_dir) if image_dir else None,
        "out": str(out) if out else None,
        "reference": reference,
        "batch_size": batch_size,
        "device": device,
        "dtype": dtype,
        "device_map": device_map,
        "engine": engine,
        "backend": backend,
        "fresh": fresh,
    }
    run = build_run(models, flags, overrides)
    from mlan.evaluate.parallel import main_process

    main = main_process()
    with task_progress("evaluating", enabled=main) as progress:
        report = run_evaluation(run, progress=progress)
    if not main:
        return  # the main process prints the results
    con = console()
    con.print(report.table(), markup=False)
    for m in report.models:
        con.print(f"results: [bold]{m.results_file}[/bold]")
    if report.comparison_file:
        con.print(f"comparison: [bold]{report.comparison_file}[/bold], chart: [bold]{report.chart_file}[/bold]")
