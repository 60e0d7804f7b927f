"""`mlan tiny-model`: a real, tiny LLaVA built offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overwrite, console
from mlan.console import quiet_logger


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

    with quiet_logger("mlan.tiny"):  # its "written to" line: said once, below, on stdout
        path = save_tiny_llava(out, size=size, seed=seed, overwrite=overwrite)
    console().print(f"tiny LLaVA ({size}, {_parameters(path):,} parameters) written to [bold]{path}[/bold]")


def _parameters(folder: Path) -> int:
    """Parameters in a saved model folder, read from its safetensors headers (no weights loaded)."""
    from math import prod

    from safetensors import safe_open

    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            n += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (safe_open is not iterable)
    return n
