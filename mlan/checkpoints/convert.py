"""`mlan convert`: an original-layout LLaVA checkpoint (`LlavaLlamaForCausalLM`) -> a Hugging Face
LLaVA folder, with every tensor the two share copied bit for bit.

This follows transformers' `src/transformers/models/llava/convert_llava_weights_to_hf.py`
@ 01080c629600d4ff3121446bb4f4a2e240c2cf41 (`convert_state_dict_to_hf`, `convert_llava_llama_to_hf`;
the older 18dcde0 has the same table less `.vision_resampler`), which cannot be called directly: it
hard-codes hub downloads (`snapshot_download`, `hf_hub_download`, `push_to_hub`) and takes the LLM's
config and tokenizer from a second hub model instead of the checkpoint's own. Like it, the CLIP
tower's weights come from the tower (the released checkpoints hold none; LLaVA loads them at
start-up, llava/model/builder.py L155-160), unless the checkpoint carries its own (a tower trained
with `unfreeze_mm_vision_tower`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mlan.checkpoints.build import BuildResult, LlavaParts, check_projector, load_tower, vision_keys, write_llava
from mlan.checkpoints.original import (
    PROJECTOR_KEYS,
    VISION_PREFIX,
    hf_name,
    original_name,
    read_original_config,
    read_weights,
)
from mlan.errors import MlanError, first_line
from mlan.hub import hub_unreachable_reason, require_hub
from mlan.io import check_output_dir
from mlan.kinds import TOKENIZER_FILES, local_folder, resolve_dtype

log = logging.getLogger(__name__)


def convert(
    original_dir: str | Path,
    out: str | Path,
    *,
    vision_tower: str | Path | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> BuildResult:
    """Write the Hugging Face LLaVA form of an original checkpoint (folder or hub id) at `out`.

    `vision_tower` defaults to the config's `mm_vision_tower`; `dtype` None keeps the checkpoint's
    (the tower is cast to it). The tokenizer is the one beside the checkpoint. All checks run
    before anything is written.
    """
    import torch
    from transformers import LlamaConfig

    started = time.monotonic()
    check_output_dir(Path(out), overwrite)
    torch_dtype = resolve_dtype(dtype, "cpu")
    folder = resolve_original(original_dir)
    oc = read_original_config(folder)
    _check_tokenizer_files(folder)
    tower_ref = str(vision_tower or oc.vision_tower)
    tensors, files, source = read_weights(folder)
    for key in PROJECTOR_KEYS:
        if key not in tensors:
            raise MlanError(f"{source}: missing tensor {key} (the projector); is this a complete LLaVA checkpoint?")
    own_vision = any(k.startswith(VISION_PREFIX) for k in tensors)
    what = "--vision-tower" if vision_tower else f"{oc.path.name} mm_vision_tower (or --vision-tower)"
    tower = load_tower(tower_ref, weights=not own_vision, what=what)
    if oc.mm_hidden_size is not None and oc.mm_hidden_size != tower.config.hidden_size:
        raise MlanError(
            f"{oc.path}: mm_hidden_size {oc.mm_hidden_size} but the vision tower {tower_ref} has hidden_size "
            f"{tower.config.hidden_size}; pass the tower it was trained with (--vision-tower)"
        )
    text_config = LlamaConfig(**oc.text_fields)
    weights, origin = _hf_weights(tensors, files, source, tower, text_config.hidden_size)
    tokenizer = _tokenizer(folder, text_config)
    embed = tensors.get("model.embed_tokens.weight")
    keep = embed.dtype if embed is not None else torch.float16
    parts = LlavaParts(
        text_config=text_config,
        tower=tower,
        weights=weights,
        origin=origin,
        tokenizer=tokenizer,
        feature_layer=oc.feature_layer,
        select_strategy=oc.select_strategy,
        image_aspect_ratio=oc.image_aspect_ratio,
        dtype=keep if torch_dtype == "auto" else torch_dtype,
        card={
            "original checkpoint": f"`{original_dir}` (LlavaLlamaForCausalLM)",
            "language model": "the original checkpoint's LLaMA weights and tokenizer",
            "vision tower": f"`{tower_ref}`",
            "vision tower weights": "the original checkpoint's own" if own_vision else f"`{tower_ref}`",
            "projector": "the original checkpoint's model.mm_projector (mlp2x_gelu)",
        },
        command="mlan convert",
        source=source,
    )
    return write_llava(parts, out, overwrite=overwrite, started=started)


def _hf_weights(tensors: dict, files: dict, source: str, tower, hidden: int) -> tuple[dict, dict[str, str]]:
    """The checkpoint's tensors under transformers 5's names, with the tower's when it has none of its own;
    the projector's shapes and the checkpoint's own tower checked (one line naming file and tensor)."""
    expected_vision = vision_keys(tower.config)
    weights: dict = {}
    origin: dict[str, str] = {}
    for key, t in tensors.items():
        name = hf_name(key, expected_vision)
        if name is not None:  # the rotary `.inv_freq` buffers are dropped, as by the converter
            weights[name], origin[name] = t, f"{files[key]}: tensor {key}"
    check_projector(weights, origin, tower.config.hidden_size, hidden, "projector")
    if tower.weights:
        weights |= tower.weights
        origin |= {k: f"{tower.label}: tensor {k}" for k in tower.weights}
    else:
        missing = sorted(expected_vision - set(weights))
        if missing:
            raise MlanError(f"{source}: missing tensor {original_name(missing[0])} (the checkpoint's own tower)")
    return weights, origin


def _check_tokenizer_files(folder: Path) -> None:
    """LLaVA saves the LLM's tokenizer beside the checkpoint (tokenizer.model + tokenizer_config.json)."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise MlanError(
            f"{folder}: no tokenizer files beside the checkpoint (tokenizer.model, tokenizer.json or "
            "tokenizer_config.json); copy the base LLM's tokenizer there"
        )


def _tokenizer(folder: Path, text_config):
    """The tokenizer beside the checkpoint, one line when it cannot be read. The LLaMA config is passed
    so that AutoTokenizer does not parse the original config.json as a (Hugging Face) LlavaConfig."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), config=text_config)
    except (OSError, ValueError, TypeError, ImportError) as e:
        raise MlanError(f"{folder}: cannot load the tokenizer ({first_line(e)})") from None


def resolve_original(ref: str | Path) -> Path:
    """A local checkpoint folder, or a hub id downloaded: configs, tokenizer and the model's weights
    (safetensors when the repo has them, else `pytorch_model*.bin`: never the 40 MB mm_projector.bin)."""
    folder = local_folder(ref, "checkpoint")
    if folder is not None:
        return folder
    require_hub(str(ref), "checkpoint", "pass a local folder instead (download it once where the hub is reachable)")
    try:
        from huggingface_hub import list_repo_files, snapshot_download

        if hub_unreachable_reason():  # in the cache already (require_hub let it through)
            return Path(snapshot_download(str(ref), local_files_only=True))
        files = list_repo_files(str(ref))
        weights = ["model*.safetensors"] if any(f.endswith(".safetensors") for f in files) else ["pytorch_model*.bin"]
        patterns = ["*.json", "*.model", "*.txt", "*.jinja", *weights]
        return Path(snapshot_download(str(ref), allow_patterns=patterns))
    except Exception as e:  # any hub failure (unknown id, gated, network) is one line
        raise MlanError(f"checkpoint {ref}: no folder or reachable hub model of that name ({first_line(e)})") from None
