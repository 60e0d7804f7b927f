"""Hugging Face model folders: what files make one, what its config says, the device and dtype to open it with.

The lowest layer of model loading, shared by `mlan.models` (which loads every kind of model for
the stages) and `mlan.wings` (which opens Wings folders), so that neither imports the other.
All checks raise `MlanError` with one line, before any weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlan.errors import MlanError, first_line
from mlan.paths import looks_like_path

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def read_model_config(name_or_path: str | Path) -> dict:
    """The model's `config.json` as a dict (a local folder, or a hub id when online)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.is_file():
            raise MlanError(f"{p}: not a model folder (no config.json)")
        return json.loads(cfg.read_text(encoding="utf-8"))
    if p.exists():
        raise MlanError(f"{p}: expected a model folder, got a file")
    if looks_like_path(str(name_or_path)):
        raise MlanError(f"{name_or_path}: model folder not found")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(name_or_path)).to_dict()
    except OSError as e:
        raise MlanError(
            f"{name_or_path}: no model folder or reachable hub model of that name ({first_line(e)})"
        ) from None


def is_llava_config(config: dict) -> bool:
    """True for a LLaVA-style config (a `text_config` and a `vision_config` around a language model)."""
    archs = config.get("architectures") or []
    return (
        config.get("model_type") in ("llava", "llava_next", "llava_onevision")
        or any("Llava" in a for a in archs)
        or ("text_config" in config and "vision_config" in config)
    )


def is_llava(name_or_path: str | Path) -> bool:
    """True when the folder (or hub id) holds a LLaVA-style multimodal model."""
    return is_llava_config(read_model_config(name_or_path))


def check_model_dir(path: str | Path, *, need_processor: bool | None = None) -> None:
    """Fail with one line if a local model folder lacks weights, tokenizer or (for LLaVA) image processor.

    Hub ids are not checked here (loading reports what is missing). `need_processor=None`
    requires an image processor exactly when the config is LLaVA-style.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return
    config = read_model_config(p)
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
