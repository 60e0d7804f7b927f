"""One home for model kinds: what a model reference is, what kind of folder it names, and the
facts every stage needs to open it (files, key names, the transformers class, device and dtype).

Kinds (`model_kind`):
- `llava`: a Hugging Face `LlavaForConditionalGeneration` folder (llava-hf layout, LLaVA-1.5);
- `llava_next`: `LlavaNextForConditionalGeneration` (LLaVA-1.6: anyres tiles and an `image_newline`);
- `llava_onevision`: `LlavaOnevisionForConditionalGeneration` (a Qwen2 language model, a SigLIP tower, anyres
  tiles up to 9 per image); weights in LLaVA's key layout;
- `qwen2_5_vl`: `Qwen2_5_VLForConditionalGeneration` (a Qwen2 language model with M-RoPE, a windowed ViT at
  dynamic resolution); weights as `model.*` (the language model, Qwen2's own names) and `visual.*` on disk;
- `wings`: a `llava` folder with Wings' learners beside it (`wings_config.json`, see `mlan.wings.save`);
- `original_llava`: the LLaVA project's own layout (`LlavaLlamaForCausalLM`: flat LLaMA fields and
  `mm_*` keys; its config also says `model_type "llava"`), which transformers cannot load: `mlan convert`;
- `causal_lm`: any other config, a text-only LLM.

sft, eval, merge, Wings and the converters all ask this module (the one "local folder or hub id"
rule, the one "is this LLaVA" test, the one legacy key-name table), so a new kind is added here once.
The lowest layer of model loading: it imports no stage and no torch at import time. Every check
raises `MlanError` with one line, before any weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlan.errors import MlanError, first_line

LLAVA = "llava"
LLAVA_NEXT = "llava_next"
LLAVA_ONEVISION = "llava_onevision"
QWEN2_5_VL = "qwen2_5_vl"
WINGS = "wings"
ORIGINAL_LLAVA = "original_llava"
CAUSAL_LM = "causal_lm"
# The kinds that are Hugging Face multimodal models (a vision tower, a projector, a language model).
MULTIMODAL_KINDS = (LLAVA, LLAVA_NEXT, LLAVA_ONEVISION, QWEN2_5_VL, WINGS)
HF_LLAVA_MODEL_TYPES = (LLAVA, LLAVA_NEXT, LLAVA_ONEVISION, QWEN2_5_VL)
# Kinds whose language model is a Qwen2 (its causal LM built by mlan.families.causal_lm_config).
QWEN2_LM_KINDS = (LLAVA_ONEVISION, QWEN2_5_VL)
# Families that look alike but are not supported, with what to use instead.
UNSUPPORTED_MODEL_TYPES = {
    "qwen2_vl": "a Qwen2-VL model (model_type qwen2_vl); mlan takes Qwen2.5-VL (qwen2_5_vl), whose vision tower "
    "and config differ",
}
WINGS_CONFIG = "wings_config.json"  # written by mlan.wings.save; named here so detection needs no torch

# llava-hf checkpoints (and transformers' default `save_pretrained`) store the legacy names on the
# left; transformers 5 names the modules in memory as on the right (its `_checkpoint_conversion_mapping`,
# ../shared/reference/llava_formats/converter_tables/modeling_llava._checkpoint_conversion_mapping.json),
# and `from_pretrained` renames on load. Code that reads weight files itself (resuming, merging) uses this table.
LEGACY_PREFIXES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
    ("image_newline", "model.image_newline"),  # LLaVA-NeXT only
)
# The language model's tensors under their causal-LM names (`model.*`, `lm_head.*`).
CURRENT_TO_CAUSAL_LM = (("model.language_model.", "model."), ("lm_head.", "lm_head."))


# Qwen2.5-VL saves its language model under Qwen2's names and its tower as `visual.*`; transformers 5
# renames them on load (conversion_mapping.py, qwen2_5_vl: `^visual` and `^model` not followed by
# `language_model` or `visual`).
QWEN_PREFIXES = (("visual.", "model.visual."), ("model.", "model.language_model."))
CURRENT_PREFIXES = ("model.language_model.", "model.visual.", "model.vision_tower.", "model.multi_modal_projector.")


def current_name(key: str) -> str:
    """A multimodal model's tensor name as transformers 5 holds it in memory, from any on-disk layout."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    if not key.startswith(CURRENT_PREFIXES):
        for old, new in QWEN_PREFIXES:
            if key.startswith(old):
                return new + key[len(old) :]
    return key


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def local_folder(ref: str | Path, what: str = "model") -> Path | None:
    """The one rule for a model reference: an existing local folder (returned), or a hub id (None).

    A hub id is `org/name`; anything else that is not an existing folder (`./x`, `/x`, `~/x`,
    `a/b/c`, a bare `name`) is reported as a missing folder rather than looked up on the hub, so a
    mistyped folder name gives "not found" instead of a hub error.
    """
    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise MlanError(f"{what} {ref}: expected a model folder, got a file")
    s = str(ref)
    if s.startswith((".", "/", "~")) or s.count("/") != 1 or "\\" in s:
        raise MlanError(f"{what} {ref}: model folder not found")
    return None


def read_model_config(ref: str | Path, *, revision: str | None = None, what: str = "model") -> dict:
    """The model's `config.json` as a dict (a local folder, or a hub id when online)."""
    folder = local_folder(ref, what)
    if folder is not None:
        cfg = folder / "config.json"
        if not cfg.is_file():
            raise MlanError(f"{what} {folder}: not a model folder (no config.json)")
        try:
            return json.loads(cfg.read_text(encoding="utf-8"))
        except ValueError as e:
            raise MlanError(f"{cfg}: invalid JSON ({e})") from None
    try:
        # The raw file, not AutoConfig: an original-layout config also says model_type "llava", and
        # AutoConfig would parse it as a LlavaConfig and lose the mm_* fields that tell the two apart.
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(str(ref), "config.json", revision=revision)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception as e:  # any hub failure (unknown id, offline, gated) is one line for the user
        raise MlanError(
            f"{what} {ref}: no model folder or reachable hub model of that name ({first_line(e)})"
        ) from None


def is_original_llava_config(config: dict) -> bool:
    """The LLaVA project's own layout: `mm_*` fields on a flat LLM config, no `vision_config`."""
    archs = config.get("architectures") or []
    original_arch = any(a.startswith("Llava") and not a.endswith("ForConditionalGeneration") for a in archs)
    return "vision_config" not in config and ("mm_vision_tower" in config or original_arch)


def is_llava_config(config: dict) -> bool:
    """A Hugging Face multimodal config mlan opens (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL).
    `model_type` decides, as it does for AutoConfig; an original-layout config says "llava" too and is
    told apart by its `mm_*` fields."""
    return config.get("model_type") in HF_LLAVA_MODEL_TYPES and not is_original_llava_config(config)


def kind_of(config: dict, folder: Path | None = None, ref: str | Path | None = None) -> str:
    """The kind of a model from its config (and its folder, where Wings' learners would sit); a family
    mlan does not take is one line naming `ref`."""
    unsupported = UNSUPPORTED_MODEL_TYPES.get(config.get("model_type"))
    if unsupported:
        raise MlanError(f"model {ref if ref is not None else folder}: {unsupported}")
    if is_original_llava_config(config):
        return ORIGINAL_LLAVA
    if not is_llava_config(config):
        return CAUSAL_LM
    if config.get("model_type") in (LLAVA_ONEVISION, QWEN2_5_VL):
        return config["model_type"]
    if folder is not None and (folder / WINGS_CONFIG).is_file():
        return WINGS
    if config.get("model_type") == LLAVA_NEXT or any(
        a.startswith("LlavaNext") for a in config.get("architectures") or []
    ):
        return LLAVA_NEXT
    return LLAVA


def model_kind(ref: str | Path, *, revision: str | None = None) -> str:
    """The kind of the model a folder or hub id names."""
    return kind_of(read_model_config(ref, revision=revision), local_folder(ref), ref)


def original_layout_error(ref: str | Path, what: str = "model") -> MlanError:
    """The one line for a checkpoint in the LLaVA project's layout, which no stage opens directly."""
    return MlanError(
        f"{what} {ref}: an original-layout LLaVA checkpoint (LlavaLlamaForCausalLM, mm_* config fields), "
        "which transformers cannot load; convert it first: mlan convert "
        f"{ref} --out <folder>"
    )


def model_class(kind: str):
    """The transformers class that opens a folder of this kind (Wings: its base LLaVA)."""
    import transformers

    if kind == ORIGINAL_LLAVA:
        raise MlanError("an original-layout LLaVA checkpoint has no transformers class; run mlan convert first")
    # By name: transformers imports a model's module when its class is first looked up, and a command that
    # opens a plain causal LM should not pay for importing every LLaVA family's (seconds on a CPU).
    return getattr(
        transformers,
        {
            LLAVA: "LlavaForConditionalGeneration",
            WINGS: "LlavaForConditionalGeneration",
            LLAVA_NEXT: "LlavaNextForConditionalGeneration",
            LLAVA_ONEVISION: "LlavaOnevisionForConditionalGeneration",
            QWEN2_5_VL: "Qwen2_5_VLForConditionalGeneration",
            CAUSAL_LM: "AutoModelForCausalLM",
        }[kind],
    )


def check_model_dir(path: str | Path, *, need_processor: bool | None = None) -> None:
    """Fail with one line if a local model folder lacks weights, tokenizer or (for LLaVA) image processor.

    Hub ids are not checked here (loading reports what is missing). `need_processor=None`
    requires an image processor exactly when the config is LLaVA-style.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return
    config = read_model_config(p)
    if is_original_llava_config(config):
        raise original_layout_error(p)
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise MlanError(f"{p}: no model weights (expected model.safetensors or pytorch_model.bin)")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise MlanError(f"{p}: no tokenizer files (expected tokenizer.json or tokenizer_config.json)")
    if need_processor is None:
        need_processor = is_llava_config(config)
    if need_processor and not any((p / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        raise MlanError(
            f"{p}: LLaVA folder without an image processor (no preprocessor_config.json); save the processor beside the model"
        )


def resolve_dtype(dtype: str | None, device: str):
    """A torch dtype from a name; "auto" keeps the checkpoint's own, except fp16 on CPU (slow, unsafe) -> fp32.

    Evaluating a bf16 checkpoint in fp16 changes its answers (a defect of the public MLAN
    scripts), so "auto" never converts between the two half types.
    """
    import torch

    if dtype in (None, "auto"):
        return "auto"
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    names |= {"float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise MlanError(f"dtype {dtype!r}: expected one of auto, {', '.join(names)}")
    return names[dtype]


def default_device() -> str:
    """cuda when a GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
