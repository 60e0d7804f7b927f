"""`mlan validate`: check config files before a long run starts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, console
from mlan.errors import MlanError

KINDS = {"mixture": "data_mixtures", "recipe": "recipes", "suite": "evaluations", "merge": "merges"}


def validate(
    files: Annotated[list[Path] | None, typer.Argument(help="YAML files; none = every shipped config.")] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="mixture, recipe, suite or merge; default: from the file's folder name."),
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Validate config files against their typed schema (unknown keys, types, cross-field rules).

    Example: mlan validate recipes/tiny.yaml -o training.learning_rate=1e-4
    """
    from mlan.config import load_config
    from mlan.config.shipped import kind_models, validate_shipped

    if not files:
        loaded = validate_shipped()
        console().print(f"{len(loaded)} shipped config files are valid")
        return
    models = kind_models()
    for f in files:
        folder = KINDS.get(kind) if kind else (f.resolve().parent.name if f.resolve().parent.name in models else None)
        if folder is None:
            valid = ", ".join(KINDS)
            what = f"unknown --kind {kind!r}" if kind else "cannot tell the config kind from its folder"
            raise MlanError(f"{f}: {what}; pass --kind ({valid})")
        load_config(f, models[folder], overrides or ())
        console().print(f"{f}: valid {folder.rstrip('s').replace('_', ' ')} config")
