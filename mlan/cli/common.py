"""Options and helpers shared by several commands (one definition, the same help everywhere)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from mlan.errors import MlanError

Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-o",
        metavar="FIELD.PATH=VALUE",
        help="Override one config field, e.g. -o training.learning_rate=1e-5 (repeatable).",
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the output folder if it exists.")]

M = TypeVar("M")
N = TypeVar("N", int, float)


def parse_list(option: str, value: str, kind: type[N], example: str) -> list[N]:
    """A comma-separated option value (`--alpha 0,0.1,0.2`, `--seeds 0,1,2`) as numbers, or one line."""
    try:
        values = [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        what = "integers" if kind is int else "numbers"
        raise MlanError(f"{option} {value!r}: expected a comma-separated list of {what}, e.g. {example}")
    return values


def load(path: str | Path, kind: str, model: type[M], overrides: list[str] | None = None) -> M:
    """Resolve a config path (or a shipped name) and load it as `model`, with overrides."""
    from mlan.config import load_config
    from mlan.paths import resolve_config

    return load_config(resolve_config(path, kind), model, overrides or ())


def console():
    """A rich console on stdout for results (tables, paths written). Log lines and progress bars
    go to stderr (`progress_console()`), so `mlan ... > out.txt` keeps only the results."""
    from rich.console import Console

    return Console(highlight=False)


def progress_console():
    """The console on stderr that progress bars share with mlan's log lines (see mlan.console)."""
    from mlan.console import log_console

    return log_console()


@contextlib.contextmanager
def task_progress(description: str, enabled: bool = True):
    """A transient bar on stderr for a library call's `progress(label, done, total)` callback; yields
    that callback (None when not `enabled`: a process other than the main one of several)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield None
        return

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=progress_console(), transient=True) as bar:
        pid = bar.add_task(description, total=None)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(pid, description=label, completed=done, total=total)

        yield progress
