"""`mlan merge`: merge the original LLM back into a LLaVA model's language model (or sweep alpha)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, Overwrite, console, parse_list


def _numbers(option: str, value: str) -> float | list[float]:
    """One number, or a list of them (a sweep)."""
    values = parse_list(option, value, float, "0,0.1,0.2")
    return values[0] if len(values) == 1 else values


def merge(
    config: Annotated[
        Path | None, typer.Argument(help="Merge YAML (fields of MergeConfig); options below override it.")
    ] = None,
    multimodal: Annotated[
        str | None,
        typer.Option("--multimodal", help="LLaVA model folder or hub id (default: the latest finished run)."),
    ] = None,
    original: Annotated[str | None, typer.Option("--original", help="Original LLM folder (or hub id).")] = None,
    method: Annotated[
        str | None, typer.Option(help="linear, task_arithmetic (default), ties, dare_linear or dare_ties.")
    ] = None,
    alpha: Annotated[
        str | None, typer.Option(help="Weight of the original LLM in [0, 1]; a comma list sweeps (0,0.05,0.1).")
    ] = None,
    density: Annotated[
        str | None, typer.Option(help="Kept fraction of the task vector in (0, 1] (ties/dare); a comma list sweeps.")
    ] = None,
    sparsify_scope: Annotated[
        str | None,
        typer.Option(
            help="ties: keep the density per tensor (tensor, default) or over the whole task vector (global)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of DARE's random masks.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: runs/merges/<model>-<method>-a<alpha>).")
    ] = None,
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help="Sweep: evaluation suite to run on each point (repeatable).")
    ] = None,
    criterion: Annotated[
        str | None, typer.Option(help="Sweep: best point by mean, language, vision or a task name.")
    ] = None,
    keep_merged: Annotated[bool, typer.Option("--keep-merged", help="Sweep: keep every merged model.")] = False,
    overrides: Overrides = None,
    overwrite: Overwrite = False,
) -> None:
    """Merge the original LLM back into a multimodal model's language model, training-free:
    merged = theta_vlm + alpha * sparsify_density(theta_llm - theta_vlm). Vision tower and projector
    are copied unchanged; the output is a complete LLaVA folder.

    Example: mlan merge --multimodal runs/sft --original lmsys/vicuna-7b-v1.5 --method task_arithmetic --alpha 0.1 --out runs/merged

    Sweep: mlan merge --multimodal runs/sft --original lmsys/vicuna-7b-v1.5 --alpha 0,0.05,0.1,0.2,0.5 --suite eight_task --suite unseen_vision --out runs/sweep
    """
    from mlan.merge.run import merge_config, run_merge
    from mlan.merge.sweep import SweepReport

    options = {"multimodal": multimodal, "original": original, "method": method, "seed": seed}
    options |= {"sparsify_scope": sparsify_scope}
    options |= {"alpha": _numbers("--alpha", alpha) if alpha else None}
    options |= {"density": _numbers("--density", density) if density else None}
    options |= {"out": str(out) if out is not None else None, "suites": list(suite) if suite else None}
    options |= {"criterion": criterion, "keep_merged": True if keep_merged else None}
    result = run_merge(merge_config(config, options, overrides), overwrite=overwrite)
    from mlan.evaluate.parallel import main_process

    if not main_process():
        return  # one of several processes of a sweep: the main one prints
    if isinstance(result, SweepReport):
        _print_sweep(result)
    else:
        _print_merge(result)


def _print_merge(result) -> None:
    c = console()
    scope = ", one threshold over the whole task vector" if result.sparsify_scope == "global" else ""
    c.print(
        f"merged {result.merged_tensors} language-model tensors ({result.method}, alpha {result.alpha:g}, "
        f"density {result.density:g}{scope}); copied {result.copied_tensors} vision/projector tensors unchanged"
    )
    if result.kept_vocab_rows:
        c.print(f"kept {result.kept_vocab_rows} vocabulary rows the original LLM lacks from the multimodal model")
    c.print(
        f"{result.layout} key layout, {result.shards} shard(s), {result.bytes_written / 1e6:.1f} MB, {result.seconds:.1f} s"
    )
    c.print(f"written to [bold]{result.out}[/bold]")


def _print_sweep(report) -> None:
    from rich.table import Table

    c = console()
    table = Table(title=f"merge sweep ({report.method}): scores in %, best by {report.criterion}")
    for col in ("alpha", "density", *report.columns, "criterion"):
        table.add_column(col, justify="right")
    for row in report.rows:
        mark = " best" if row is report.best else ("" if row.eligible else " excluded")
        cells = [f"{100 * row.scores[k]:.1f}" if k in row.scores else "-" for k in report.columns]
        table.add_row(f"{row.alpha:g}", f"{row.density:g}", *cells, f"{100 * row.score:.1f}{mark}")
    c.print(table)
    b = report.best
    c.print(f"best: alpha {b.alpha:g}, density {b.density:g} ({report.criterion} {100 * b.score:.1f})")
    c.print(f"report: [bold]{report.out}[/bold] (sweep.json, sweep.md, sweep.png)")
