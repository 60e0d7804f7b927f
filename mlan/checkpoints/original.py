"""The LLaVA project's own checkpoint layout (`LlavaLlamaForCausalLM`), read without the LLaVA code.

An original checkpoint is a LLaMA causal LM whose config carries flat LLaMA fields plus `mm_*`
fields, and whose weights add `model.mm_projector.*` (and, only when the tower was unfrozen,
`model.vision_tower.vision_tower.vision_model.*`). Authorities, haotian-liu/LLaVA @ c121f04:
`llava/model/llava_arch.py` L29-97 (the fields and the projector loader), `llava/model/
multimodal_projector/builder.py` L33-51 (projector types), `llava/model/multimodal_encoder/
clip_encoder.py` L7-43 (tower keys, feature selection); transformers' `convert_llava_weights_to_hf.py`
@ 01080c6 (the key table). Real field and key names: ../shared/reference/llava_formats/.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan.errors import MlanError, first_line
from mlan.kinds import current_name, is_original_llava_config, read_model_config

log = logging.getLogger(__name__)

__all__ = [
    "KEYS_TO_MODIFY_MAPPING",
    "OriginalConfig",
    "hf_name",
    "is_original_llava_config",
    "legacy_name",
    "original_name",
    "read_original_config",
    "read_projector_file",
    "read_weights",
]

ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
# "llava" before LLaVA v1.6 (commit 0a16dea), "llava_llama" after: llava/model/language_model/llava_llama.py L30-31.
ORIGINAL_MODEL_TYPES = ("llava", "llava_llama")

# transformers src/transformers/models/llava/convert_llava_weights_to_hf.py @ 01080c6 (about lines 49-59),
# applied as there (`convert_state_dict_to_hf`): skip `.inv_freq`, then every entry in this order
# whose text occurs is applied with str.replace. It yields the legacy llava-hf names.
KEYS_TO_MODIFY_MAPPING = {
    "model.vision_tower.": "",
    ".vision_resampler": "",
    "model.mm_projector": "multi_modal_projector",
    "model": "model.model",
    "vision_model.model": "vision_model",
    "lm_head": "language_model.lm_head",
    "model.model": "language_model.model",
    "multi_modal_projector.0": "multi_modal_projector.linear_1",
    "multi_modal_projector.2": "multi_modal_projector.linear_2",
}
PROJECTOR_KEYS = ("model.mm_projector.0.weight", "model.mm_projector.0.bias")
PROJECTOR_KEYS += ("model.mm_projector.2.weight", "model.mm_projector.2.bias")
VISION_PREFIX = "model.vision_tower.vision_tower."
# llava/model/multimodal_encoder/clip_encoder.py L35-43: "patch" drops CLS, "cls_patch" keeps it.
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
LINEAR_PROJECTOR = (
    "Hugging Face LLaVA's projector is always Linear-GELU-Linear (mlp2x_gelu); "
    "a {what} projector has no equivalent there"
)


@dataclass(frozen=True)
class OriginalConfig:
    """What an original config says, in Hugging Face terms (README's config mapping)."""

    path: Path
    text_fields: dict[str, Any]
    vision_tower: str
    mm_hidden_size: int | None
    feature_layer: int
    select_strategy: str
    image_aspect_ratio: str | None


def legacy_name(key: str) -> str | None:
    """An original key under its legacy llava-hf name (None for the dropped `.inv_freq` buffers)."""
    if key.endswith(".inv_freq"):
        return None
    for old, new in KEYS_TO_MODIFY_MAPPING.items():
        if old in key:
            key = key.replace(old, new)
    return key


def hf_name(key: str, expected: set[str] | None = None) -> str | None:
    """An original key under the name transformers 5 gives it in memory (and `from_pretrained` loads):
    `model.language_model.*`, `lm_head.*`, `model.multi_modal_projector.*`, `model.vision_tower.*`.

    transformers 5 renames the legacy llava-hf prefixes on load (mlan.kinds' table); newer releases
    also drop CLIPVisionModel's inner `vision_model.` (conversion_mapping.py, PrefixChange), so with
    `expected` (the model's own key set) that form is chosen when it is the one the model has.
    """
    legacy = legacy_name(key)
    if legacy is None:
        return None
    name = current_name(legacy)
    flat = name.replace("model.vision_tower.vision_model.", "model.vision_tower.", 1)
    if expected is not None and name not in expected and flat in expected:
        return flat
    return name


def original_name(name: str) -> str:
    """The original checkpoint's key for a tensor named as transformers 5 names it (for messages)."""
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    if name.startswith("model.multi_modal_projector.linear_"):
        layer, rest = name.removeprefix("model.multi_modal_projector.linear_").split(".", 1)
        return f"model.mm_projector.{'0' if layer == '1' else '2'}.{rest}"
    if name.startswith("model.vision_tower."):
        inner = name.removeprefix("model.vision_tower.")
        return VISION_PREFIX + (inner if inner.startswith("vision_model.") else "vision_model." + inner)
    return name


def _check_kind(config: dict, path: Path) -> None:
    archs = config.get("architectures") or []
    if not is_original_llava_config(config):
        from mlan.kinds import is_llava_config

        if is_llava_config(config):
            raise MlanError(
                f"{path}: already a Hugging Face LLaVA config (text_config, vision_config); nothing to convert"
            )
        raise MlanError(
            f"{path}: not an original-layout LLaVA checkpoint (model_type {config.get('model_type')!r}, "
            f"architectures {archs}); expected LlavaLlamaForCausalLM with mm_* fields"
        )
    if archs and not any(a in ORIGINAL_ARCHITECTURES for a in archs):
        raise MlanError(f"{path}: architectures {archs}: only LlavaLlamaForCausalLM (LLaVA-1.5 on LLaMA) is supported")
    if config.get("model_type") not in ORIGINAL_MODEL_TYPES:
        raise MlanError(
            f"{path}: model_type {config.get('model_type')!r}: expected one of {', '.join(ORIGINAL_MODEL_TYPES)}"
        )


def check_projector_type(ptype: str | None, where: str) -> None:
    """Only mlp2x_gelu maps onto LlavaMultiModalProjector. A missing type is LLaVA's default, linear
    (llava/train/train.py L54-78: `mm_projector_type` defaults to 'linear')."""
    if ptype == "mlp2x_gelu":
        return
    what = "linear" if ptype in (None, "linear") else repr(ptype)
    field = "no mm_projector_type (LLaVA's default: linear)" if ptype is None else f"mm_projector_type {ptype!r}"
    raise MlanError(f"{where}: {field}: " + LINEAR_PROJECTOR.format(what=what))


def read_original_config(folder: Path) -> OriginalConfig:
    """The config.json of an original checkpoint, checked and mapped (one-line errors naming the field)."""
    path = folder / "config.json"
    config = read_model_config(folder)
    _check_kind(config, path)
    check_projector_type(config.get("mm_projector_type"), str(path))
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(flag):
            raise MlanError(f"{path}: {flag} true: image start/end/patch tokens have no Hugging Face LLaVA equivalent")
    if "unpad" in str(config.get("mm_patch_merge_type") or "") or config.get("image_grid_pinpoints"):
        raise MlanError(
            f"{path}: mm_patch_merge_type/image_grid_pinpoints: a LLaVA-NeXT (anyres) checkpoint, not LLaVA-1.5"
        )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise MlanError(f"{path}: mm_vision_select_feature {feature!r}: expected patch or cls_patch")
    tower = config.get("mm_vision_tower") or config.get("vision_tower")
    if not tower:
        raise MlanError(f"{path}: no mm_vision_tower field; pass the CLIP tower with --vision-tower")
    return OriginalConfig(
        path=path,
        text_fields=text_fields(config),
        vision_tower=str(tower),
        mm_hidden_size=config.get("mm_hidden_size"),
        # LLaVA's own default is -1 (llava/train/train.py L54-78); v1.5 configs say -2.
        feature_layer=int(config.get("mm_vision_select_layer", -1)),
        select_strategy=SELECT_FEATURE[feature],
        image_aspect_ratio=config.get("image_aspect_ratio"),
    )


def text_fields(config: dict) -> dict[str, Any]:
    """The flat LLaMA fields of an original config, as LlamaConfig keyword arguments.

    A whitelist of LlamaConfig's own fields (plus the pre-v5 rope names it still accepts), so
    every `mm_*` field, training flag (`tune_*`, `freeze_*`, MLAN's `freeze_backbone`) and
    generation field (`max_length`) is dropped, as README's "dropped training flags" lists."""
    from transformers import LlamaConfig

    known = set(LlamaConfig().to_dict()) | {"torch_dtype"}
    known -= {"architectures", "model_type", "_name_or_path", "transformers_version", "id2label", "label2id"}
    fields = {k: v for k, v in config.items() if k in known}
    # transformers 5 folds the pre-v5 `rope_theta` / `rope_scaling` (v1.5 says null) into `rope_parameters`.
    if "rope_parameters" not in fields and (config.get("rope_scaling") or "rope_theta" in config):
        rope = dict(config.get("rope_scaling") or {"type": "default"})
        rope["rope_type"] = rope.pop("type", None) or rope.get("rope_type", "default")
        fields["rope_parameters"] = {**rope, "rope_theta": config.get("rope_theta", 10000.0)}
    return fields


def _load_bin(path: Path) -> dict:
    import torch

    try:
        # mmap pages tensors in on demand: a 7B checkpoint is not read twice into memory.
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        try:  # pickles from before torch's zip format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MlanError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    except Exception as e:
        raise MlanError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    if not isinstance(state, dict):
        raise MlanError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _load_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:
        raise MlanError(f"{path}: not a readable safetensors file ({first_line(e)})") from None


def load_tensor_file(path: Path) -> dict:
    """All tensors of one weight file (.safetensors or a torch .bin state dict)."""
    return _load_safetensors(path) if path.suffix == ".safetensors" else _load_bin(path)


def weight_files(folder: Path) -> tuple[list[Path], Path | None]:
    """The weight files of a folder and the index naming them (None for a single file).

    The original layout has `pytorch_model-0000{1,2}-of-00002.bin` + index; the hub's
    safetensors-convertbot variant has the same keys in `model-*.safetensors`."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            try:
                names = list(dict.fromkeys(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise MlanError(f"{index}: invalid index ({first_line(e)})") from None
            for n in names:
                if not (folder / n).is_file():
                    raise MlanError(f"{folder / n}: weight file named in {index_name} is missing")
            return [folder / n for n in names], index
        if (folder / single).is_file():
            return [folder / single], None
    raise MlanError(f"{folder}: no model weights (expected pytorch_model.bin or model.safetensors, maybe sharded)")


def read_weights(folder: Path) -> tuple[dict, dict[str, Path], str]:
    """Every tensor of an original checkpoint: (tensors by original key, the file each came from,
    the file to name when a tensor is missing: the index, or the single weight file)."""
    files, index = weight_files(folder)
    tensors: dict = {}
    origin: dict[str, Path] = {}
    for f in files:
        for key, t in load_tensor_file(f).items():
            if key in tensors:
                raise MlanError(f"{f}: tensor {key} also stored in {origin[key]}")
            tensors[key], origin[key] = t, f
    return tensors, origin, str(index or files[0])


def read_projector_file(path: Path) -> dict:
    """A stage-1 `mm_projector.bin` under the original full names (`model.mm_projector.0.weight`, ...).

    LLaVA saves the projector's keys with their full names (llava/train/train.py L185-207) and its
    loader strips them up to `mm_projector.` (llava/model/llava_arch.py L92-97, `get_w`), so any
    prefix is accepted here the same way. A config.json beside the file (the stage-1 run's) is
    checked for the projector type too."""
    if not path.is_file():
        raise MlanError(f"--projector {path}: file not found")
    beside = path.parent / "config.json"
    if beside.is_file():
        try:
            ptype = json.loads(beside.read_text(encoding="utf-8")).get("mm_projector_type")
        except (ValueError, AttributeError):
            ptype = "mlp2x_gelu"  # an unreadable neighbour says nothing; the keys decide below
        check_projector_type(ptype, str(beside))
    state = load_tensor_file(path)
    if any(k.endswith("embed_tokens.weight") for k in state):
        raise MlanError(
            f"{path}: holds model.embed_tokens.weight (trained with mm_use_im_start_end): "
            "image start/end tokens have no Hugging Face LLaVA equivalent"
        )
    parts = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    if not parts:
        raise MlanError(f"{path}: no mm_projector tensors (keys like model.mm_projector.0.weight)")
    if set(parts) <= {"weight", "bias"}:
        raise MlanError(f"{path}: tensor model.mm_projector.weight: " + LINEAR_PROJECTOR.format(what="linear"))
    extra = sorted(set(parts) - {k.removeprefix("model.mm_projector.") for k in PROJECTOR_KEYS})
    if extra:
        raise MlanError(f"{path}: tensor model.mm_projector.{extra[0]}: not a 2-layer (mlp2x_gelu) projector")
    for key in PROJECTOR_KEYS:
        if key.removeprefix("model.mm_projector.") not in parts:
            raise MlanError(f"{path}: missing tensor {key}")
    return {key: parts[key.removeprefix("model.mm_projector.")] for key in PROJECTOR_KEYS}
