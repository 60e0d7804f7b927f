"""The `mlan` command line: thin Typer commands over the library API.

Each command parses its options, loads and validates its config, calls one library
function and prints a summary. Heavy libraries (torch, transformers, datasets) are imported
inside the commands so that `mlan --help` answers at once. Commands live one group per
module beside this file and are registered here explicitly (no plugin discovery).
"""

from __future__ import annotations

import inspect
import re
import sys

import typer
from typer.core import TyperCommand, TyperGroup

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


class _Command(TyperCommand):
    """A command that loads models or data: the libraries' logging and progress bars are set up
    once its options are parsed (not for `--help`, which stays instant)."""

    def invoke(self, ctx):
        from mlan.console import quiet_libraries

        quiet_libraries()
        return super().invoke(ctx)


def prose(text: str) -> str:
    """Help text as Typer's rich mode should show it: the lines of a paragraph joined, so the
    terminal wraps sentences instead of the source's line breaks; list items ("- ", "* ", "1. ")
    start their own line; a paragraph that starts with \\b keeps its lines as written."""
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b"):
            out.append(para[1:].lstrip("\n"))  # Typer's rich mode would print the \b itself
            continue
        lines: list[str] = []
        for line in para.splitlines():
            line = line.strip()
            if lines and not _LIST_ITEM.match(line):
                lines[-1] += " " + line
            else:
                lines.append(line)
        out.append("\n".join(lines))
    return "\n\n".join(out)


_LIST_ITEM = re.compile(r"([-*]|\d+[.)])\s")


app = typer.Typer(
    cls=_Group,
    name="mlan",
    help=prose(
        "Language-based instruction tuning of multimodal LLMs: build mixtures, fine-tune "
        "LLaVA-style models, evaluate language and vision reasoning, merge the original LLM back.\n\n"
        "In a project folder, each command finds the previous one's output:\n\n"
        "\b\n"
        "  mlan build-mixture            MLAN's released rows -> runs/mixtures/mlan_released\n"
        "  mlan sft recipes/vicuna.yaml  runs/mixtures/mlan_released -> runs/vicuna (newest run)\n"
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
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Show everything: debug logging of mlan and the libraries, their warnings and progress bars.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors, no progress bars."),
    local_rank: int | None = typer.Option(
        None, "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher (also as LOCAL_RANK)."
    ),
) -> None:
    from mlan.console import NORMAL, QUIET, VERBOSE, setup

    setup(VERBOSE if verbose else QUIET if quiet else NORMAL)


def _register() -> None:
    from mlan.cli import chat, checkpoints, evaluate, lab, merge, mixture, quickstart, rationales, sft, tiny, validate

    # validate reads YAML only: no library to set up.
    for name, fn, cls in (
        ("build-mixture", mixture.build_mixture, _Command),
        ("rationales", rationales.rationales, _Command),
        ("assemble", checkpoints.assemble, _Command),
        ("convert", checkpoints.convert, _Command),
        ("sft", sft.sft, _Command),
        ("eval", evaluate.evaluate, _Command),
        ("merge", merge.merge, _Command),
        ("chat", chat.chat, _Command),
        ("quickstart", quickstart.quickstart, _Command),
        ("lab", lab.lab, _Command),
        ("tiny-model", tiny.tiny_model, _Command),
        ("validate", validate.validate, TyperCommand),
    ):
        app.command(name, cls=cls, help=prose(fn.__doc__ or ""))(fn)


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
