"""`mlan assemble`: an LLM + a CLIP vision tower + a projector -> one Hugging Face LLaVA folder.

This is how a LLaVA-1.5 stage-1 model is put together (llava/model/llava_arch.py L49-97,
`initialize_vision_modules`): the LLM as released, the CLIP tower as released, and the projector
either fresh (what stage 1 trains) or a released stage-1 `mm_projector.bin`. The result loads with
`LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained`, ready for `mlan sft`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mlan.checkpoints.build import (
    DEFAULT_VISION_TOWER,
    BuildResult,
    LlavaParts,
    check_projector,
    fresh_projector,
    load_tower,
    resolve,
    write_llava,
)
from mlan.checkpoints.original import hf_name, read_projector_file
from mlan.errors import MlanError, first_line
from mlan.io import check_output_dir
from mlan.kinds import is_llava_config, is_original_llava_config, read_model_config, resolve_dtype

log = logging.getLogger(__name__)


def assemble(
    llm: str | Path,
    out: str | Path,
    *,
    vision_tower: str | Path = DEFAULT_VISION_TOWER,
    projector: str | Path | None = None,
    feature_layer: int = -2,
    dtype: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> BuildResult:
    """Write a LLaVA folder at `out` from an LLM (folder or hub id: a causal LM with its tokenizer),
    a CLIP tower (folder or hub id of a CLIPVisionModel/CLIPModel with its image processor) and a
    projector: a released stage-1 `mm_projector.bin`, or (None) a fresh mlp2x_gelu one from `seed`.

    `dtype` (fp32, bf16, fp16; None keeps the LLM's own) is the dtype of every tensor written.
    Every check (hub reachable, kinds, projector shapes) runs before anything is written.
    """
    started = time.monotonic()
    check_output_dir(Path(out), overwrite)
    torch_dtype = resolve_dtype(dtype, "cpu")
    src = resolve(llm, "--llm")
    config = read_model_config(src, what="--llm")
    if is_original_llava_config(config):
        raise MlanError(f"--llm {llm}: an original-layout LLaVA checkpoint, not an LLM; use mlan convert {llm}")
    if is_llava_config(config):
        raise MlanError(f"--llm {llm}: already a LLaVA model; --llm takes a text-only LLM (e.g. lmsys/vicuna-7b-v1.5)")
    tower = load_tower(vision_tower, weights=True)
    hidden = config.get("hidden_size")
    weights: dict = {}
    origin: dict[str, str] = {}
    if projector is not None:
        for key, t in read_projector_file(Path(projector)).items():
            weights[hf_name(key)], origin[hf_name(key)] = t, f"{projector}: tensor {key}"
        # Checked against the LLM's config before its weights are read (minutes for a 7B model).
        check_projector(weights, origin, tower.config.hidden_size, hidden, "projector")
    model, tokenizer = _load_llm(llm, src, torch_dtype)
    for key, t in model.state_dict().items():
        if key.startswith("model."):
            name = "model.language_model." + key.removeprefix("model.")
        elif key.startswith("lm_head."):
            name = key
        else:
            raise MlanError(f"--llm {llm}: tensor {key}: expected a decoder-only causal LM (model.*, lm_head.*)")
        weights[name], origin[name] = t, f"--llm {llm}: tensor {key}"
    if projector is None:
        weights |= fresh_projector(tower.config.hidden_size, model.config.hidden_size, seed)
    for k, t in tower.weights.items():
        weights[k], origin[k] = t, f"--vision-tower {vision_tower}: tensor {k.removeprefix('model.vision_tower.')}"
    proj_card = (
        f"released stage-1 projector {projector}"
        if projector is not None
        else f"fresh mlp2x_gelu, untrained (torch nn.Linear default init, seed {seed})"
    )
    parts = LlavaParts(
        text_config=model.config,
        tower=tower,
        weights=weights,
        origin=origin,
        tokenizer=tokenizer,
        feature_layer=feature_layer,
        select_strategy="default",
        dtype=model.dtype if torch_dtype == "auto" else torch_dtype,
        card={
            "language model": f"`{llm}`",
            "vision tower": f"`{vision_tower}` ({_tower_shape(tower.config)})",
            "vision tower weights": f"`{vision_tower}`",
            "projector": proj_card,
        },
        command="mlan assemble",
        source=f"--llm {llm}",
    )
    return write_llava(parts, out, overwrite=overwrite, started=started)


def _load_llm(ref, src: str, dtype):
    """The LLM and its tokenizer via `from_pretrained` (hub ids download as usual), one line on failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError, TypeError) as e:
        raise MlanError(f"--llm {ref}: no tokenizer ({first_line(e)})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    except (OSError, ValueError) as e:
        raise MlanError(f"--llm {ref}: cannot load as a causal LM ({first_line(e)})") from None
    log.info("LLM %s: %s, hidden size %d", ref, type(model).__name__, model.config.hidden_size)
    return model, tokenizer


def _tower_shape(config) -> str:
    return f"CLIP, hidden size {config.hidden_size}, image {config.image_size}, patch {config.patch_size}"
