"""`mlan chat`: talk to a model (the newest run by default), one answer or an interactive conversation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def _write(text: str) -> None:
    typer.echo(text, nl=False)  # flushed at once: the answer appears as it is generated


def _say(text: str) -> None:
    typer.echo(text, err=True)


def _read() -> str:
    # The "> " marker only on a terminal: piped in, stdout keeps nothing but the answers.
    return input("> " if sys.stdin.isatty() else "")


def chat(
    model: Annotated[
        str | None,
        typer.Argument(
            help="Model folder or hub id (any kind mlan trains, or a LoRA output folder); default: the newest run."
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="Print the answer to this one message and exit (no conversation)."),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", "-i", help="Image to go with the first message (LLaVA-style models)."),
    ] = None,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", min=0.0, help="Sample at this temperature; 0 (default): greedy.")
    ] = 0.0,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", min=1, help="At most this many tokens per answer.")
    ] = 512,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, ... (default: cuda if available).")] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (the checkpoint's, the default), bfloat16, float16 or float32.")
    ] = "auto",
) -> None:
    """Chat with a model in its own chat template: after tuning or merging, look at what it says.

    Without --prompt, a conversation: type a message and press Enter; the answer streams as it is
    generated. `/image PATH` attaches an image to your next message (LLaVA-style models), `/reset`
    starts over, `/exit` or Ctrl-D ends. With --prompt, the one answer goes to stdout (scriptable).

    Greedy by default (the answer `mlan eval` scores); --temperature samples.

    Example: mlan chat runs/vicuna --image photo.jpg --prompt "What is in this picture?"
    """
    from mlan.chat import HELP, chat_loop, open_chat

    session = open_chat(model, image=image, device=device, dtype=dtype)
    generate = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    if prompt is not None:
        session.ask(prompt, write=_write, **generate)
        _write("\n")
        return
    _say(f"chatting with {session.target.name} ({session.target.kind})\n{HELP}")
    chat_loop(session, _read, _write, _say, **generate)
