"""`mlan tiny-model`: a real, tiny LLaVA built offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overwrite, console


def tiny_model(
    out: Annotated[Path, typer.Argument(help="Folder to write the model and processor to.")],
    size: Annotated[
        str, typer.Option(help="tiny (~0.4M parameters), small (~2.5M), lab (~0.6M, the lab's shape) or base (~21M).")
    ] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Build a tiny LlavaForConditionalGeneration + LlavaProcessor (Llama + CLIP, local BPE
    tokenizer, Vicuna-v1 chat template) and save it as a Hugging Face folder.

    Example: mlan tiny-model runs/tiny --size small
    """
    from mlan.tiny import save_tiny_llava

    path = save_tiny_llava(out, size=size, seed=seed, overwrite=overwrite)
    console().print(f"tiny LLaVA ({size}) written to [bold]{path}[/bold]")
