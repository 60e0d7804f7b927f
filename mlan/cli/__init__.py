"""The `mlan` command line: thin Typer commands over the library API.

Each command parses its options, loads and validates its config, calls one library
function and prints a summary. Heavy libraries (torch, transformers, datasets) are imported
inside the commands so that `mlan --help` answers at once. Commands live one group per
module beside this file and are registered here explicitly (no plugin discovery).
"""

from __future__ import annotations

import logging
import sys

import typer
from typer.core import TyperGroup

from mlan.errors import MlanError


class _Group(TyperGroup):
    """Turns a user error (`MlanError`) into one line on stderr and exit code 2, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MlanError as e:
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(2) from None

    def list_commands(self, ctx):
        # The order a user meets the stages in, not alphabetical.
        return list(self.commands)


app = typer.Typer(
    cls=_Group,
    name="mlan",
    help=(
        "Language-based instruction tuning of multimodal LLMs: build mixtures, fine-tune "
        "LLaVA-style models, evaluate language and vision reasoning, merge the original LLM back.\n\n"
        "In a project folder, each command finds the previous one's output:\n\n"
        "\b\n"
        "  mlan build-mixture            data_mixtures/mlan.yaml -> runs/mixtures/mlan\n"
        "  mlan sft recipes/vicuna.yaml  runs/mixtures/mlan -> runs/vicuna (newest run)\n"
        "  mlan eval --unseen            evaluates the newest run\n\n"
        "Offline, on a CPU, the whole pipeline on bundled data: mlan quickstart"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, markup=False)],
        force=True,
    )
    logging.getLogger("mlan").setLevel(level)


def _register() -> None:
    from mlan.cli import evaluate, lab, merge, mixture, quickstart, sft, tiny, validate

    app.command("build-mixture")(mixture.build_mixture)
    app.command("sft")(sft.sft)
    app.command("eval")(evaluate.evaluate)
    app.command("merge")(merge.merge)
    app.command("quickstart")(quickstart.quickstart)
    app.command("lab")(lab.lab)
    app.command("tiny-model")(tiny.tiny_model)
    app.command("validate")(validate.validate)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
