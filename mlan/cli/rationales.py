"""`mlan rationales`: MLAN's teacher step, a rationale for every row a mixture spec draws."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, console, load, progress_console
from mlan.errors import MlanError


def _shard(value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, 1
    i, sep, n = value.partition("/")
    try:
        if sep and int(n) > 0 and 0 <= int(i) < int(n):
            return int(i), int(n)
    except ValueError:
        pass
    raise MlanError(f"--shard {value}: expected i/N with 0 <= i < N, e.g. 0/4")


def rationales(
    spec: Annotated[
        str, typer.Argument(help="Mixture spec: a YAML file or a shipped name; its rows are the ones explained.")
    ] = "data_mixtures/mlan.yaml",
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Language teacher (folder or hub id); sets rationales.teacher.")
    ] = None,
    vision_teacher: Annotated[
        str | None,
        typer.Option(
            "--vision-teacher", help="Teacher of image rows (a LLaVA folder or hub id); sets rationales.vision_teacher."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The store folder (default: runs/rationales/<spec name>).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N rows drawn of each source.")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", metavar="i/N", help="Only rows whose id hashes to i of N (several processes or machines)."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Read hub sources from local copies: DIR/<source name>/<split>.jsonl."),
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Ask a teacher model for a rationale of every row a mixture spec draws (the same rows, one to one, as
    `mlan build-mixture` builds), MLAN's way: its instruction, one exemplar per row, the gold answer shown,
    its sampling. Records are appended to the store as they come: a killed run started again goes on where
    it stopped. Then build the mixture with `-o targets=rationale`.

    Example: mlan rationales data_mixtures/mlan.yaml --limit 20 --teacher Qwen/Qwen2.5-0.5B-Instruct
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mlan.config.mixture import MixtureSpec
    from mlan.rationales import generate_rationales

    flags = [f"rationales.{k}={v}" for k, v in (("teacher", teacher), ("vision_teacher", vision_teacher)) if v]
    if out is not None:
        flags.append(f"rationales.store={out}")
    cfg = load(spec, "data_mixtures", MixtureSpec, [*(overrides or []), *flags])
    if data_dir is not None:
        from mlan.data.sources import with_local_data

        cfg = with_local_data(cfg, data_dir)
    con = console()
    columns = (
        TextColumn("rationales"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=progress_console(), transient=True)
    with bar:  # transient, and drawn only on a terminal (as task_progress's)
        pid = bar.add_task("rationales", total=None, rate="")
        start = time.perf_counter()

        def progress(done: int, total: int, tokens: int) -> None:
            rate = tokens / max(time.perf_counter() - start, 1e-9)
            bar.update(pid, completed=done, total=total, rate=f"{rate:,.0f} tok/s")

        result = generate_rationales(cfg, limit=limit, shard=_shard(shard), progress=progress)
    con.print(_table(result.summary))
    con.print(
        f"{result.generated} rows generated, {result.already_done} already in the store, "
        f"in {result.seconds:.1f} s -> [bold]{result.store}[/bold]"
    )


def _table(summary: dict):
    """Rows per status per source, as the store's summary.md has them."""
    from rich.table import Table

    from mlan.rationales.clean import STATUSES

    t = summary["teacher_tokens"]
    rate = summary["new_tokens_per_second"]
    retries = summary.get("retries")
    table = Table(
        title="rationales in the store",
        caption=f"teacher tokens: {t['prompt']:,} prompt, {t['new']:,} generated"
        + (f" ({summary['rows_per_second']:,.2f} rows/s, {rate:,.1f} tokens/s)" if rate else "")
        + (f"; {retries} requests retried" if retries else ""),
    )
    table.add_column("source", no_wrap=True)
    for col in ("rows", *STATUSES, "words (kept)"):
        table.add_column(col, justify="right")
    for name, s in summary["sources"].items():
        words = "-" if s["mean_words_kept"] is None else f"{s['mean_words_kept']:.1f}"
        table.add_row(name, str(s["rows"]), *(str(s["status"][k]) for k in STATUSES), words)
    return table
