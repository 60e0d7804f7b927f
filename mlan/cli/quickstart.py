"""`mlan quickstart`: the whole pipeline on bundled data, offline, on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overwrite, console


def quickstart(
    out: Annotated[Path, typer.Option(help="Folder for every stage's output.")] = Path("runs/quickstart"),
    size: Annotated[str, typer.Option(help="Tiny model size: tiny, small, lab or base.")] = "tiny",
    limit: Annotated[int, typer.Option(help="Questions per evaluation task.")] = 40,
    overwrite: Overwrite = False,
) -> None:
    """Run every stage on bundled data with a tiny model (no hub, no GPU) and show what each produced.

    Example: mlan quickstart --out runs/quickstart --overwrite
    """
    from rich.table import Table

    from mlan.quickstart import run_quickstart

    result = run_quickstart(out, overwrite=overwrite, size=size, limit=limit)
    table = Table(title=f"quickstart: {result.out}")
    for col in ("stage", "output", "result", "seconds"):
        table.add_column(col)
    for s in result.stages:
        table.add_row(s.stage, s.output, s.summary, f"{s.seconds:.1f}")
    console().print(table)
    if result.table:
        console().print(f"\nEvaluation (written to {result.out / 'eval'}):\n")
        console().print(result.table, markup=False)
