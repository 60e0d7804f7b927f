"""`mlan assemble` and `mlan convert`: a Hugging Face LLaVA folder from released parts or from the
LLaVA project's original layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overwrite, console
from mlan.errors import MlanError

# mlan.checkpoints.DEFAULT_VISION_TOWER, written out: importing it would load the library for --help.
DEFAULT_TOWER = "openai/clip-vit-large-patch14-336"
Out = Annotated[Path | None, typer.Option("--out", help="Output folder (required).")]
Dtype = Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 for every tensor written.")]


def assemble(
    llm: Annotated[
        str | None,
        typer.Option("--llm", help="LLM folder or hub id: a Llama-style causal LM with its tokenizer."),
    ] = None,
    vision_tower: Annotated[
        str, typer.Option("--vision-tower", help="CLIP vision tower folder or hub id, with its image processor.")
    ] = DEFAULT_TOWER,
    projector: Annotated[
        Path | None,
        typer.Option(
            "--projector", help="A released stage-1 mm_projector.bin (default: a fresh mlp2x_gelu projector)."
        ),
    ] = None,
    out: Out = None,
    feature_layer: Annotated[
        int, typer.Option("--feature-layer", help="Vision tower layer whose features are projected.")
    ] = -2,
    dtype: Dtype = None,
    seed: Annotated[int, typer.Option(help="Seed of the fresh projector's initialisation.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Assemble an LLM, a CLIP vision tower and a projector into one Hugging Face LLaVA folder
    (LlavaForConditionalGeneration + LlavaProcessor with the Vicuna-v1 chat template), as LLaVA-1.5
    builds its stage-1 model. Without --projector the projector is fresh (untrained): train it with
    mlan sft (train.projector, language model frozen) before anything else.

    Example: mlan assemble --llm lmsys/vicuna-7b-v1.5 --projector mm_projector.bin --out runs/models/stage1
    """
    from mlan.checkpoints import assemble as run

    if not llm:
        raise MlanError("--llm: required (an LLM folder or hub id, e.g. lmsys/vicuna-7b-v1.5)")
    if out is None:
        raise MlanError("--out: required (the folder to write the LLaVA model to)")
    result = run(
        llm,
        out,
        vision_tower=vision_tower,
        projector=projector,
        feature_layer=feature_layer,
        dtype=dtype,
        overwrite=overwrite,
        seed=seed,
    )
    _summary("assembled", result)


def convert(
    original: Annotated[
        str, typer.Argument(help="Original-layout LLaVA checkpoint folder or hub id (LlavaLlamaForCausalLM).")
    ],
    out: Out = None,
    vision_tower: Annotated[
        str | None,
        typer.Option(
            "--vision-tower", help="CLIP vision tower folder or hub id (default: the config's mm_vision_tower)."
        ),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (default: keep the checkpoint's).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Convert a checkpoint in the LLaVA project's own layout (LlavaLlamaForCausalLM: mm_* config fields,
    model.mm_projector weights) into a Hugging Face LLaVA folder. Shared tensors are copied bit for bit;
    the vision tower comes from the CLIP tower unless the checkpoint holds its own.

    Example: mlan convert liuhaotian/llava-v1.5-7b --out runs/models/llava-v1.5-7b
    """
    from mlan.checkpoints import convert as run

    if out is None:
        raise MlanError("--out: required (the folder to write the LLaVA model to)")
    result = run(original, out, vision_tower=vision_tower, dtype=dtype, overwrite=overwrite)
    _summary("converted", result)


def _summary(verb: str, r) -> None:
    c = console()
    old, new = r.vocab_rows
    vocab = f"vocabulary {old} -> {new} rows" if new > old else f"vocabulary {new} rows"
    c.print(
        f"{verb} LLaVA: {r.parameters / 1e6:,.1f}M parameters ({r.dtype}), {r.image_tokens} image tokens per image "
        f"(<image> = {r.image_token_id}, pad = {r.pad_token_id}), {vocab}"
    )
    c.print(f"vision tower weights: {r.vision_from}; projector: {r.projector_from}".replace("`", ""))
    c.print(f"written to [bold]{r.out}[/bold] ({r.seconds:.1f} s)")
