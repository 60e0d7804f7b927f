"""Reading Wings models: recognising a Wings folder, its config, its learner weights (see `mlan.wings.save`
for the layout)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlan.config.base import validate_config
from mlan.config.wings import WingsConfig
from mlan.errors import MlanError, first_line
from mlan.kinds import check_model_dir, default_device, resolve_dtype
from mlan.wings.model import add_wings
from mlan.wings.runtime import set_system_prompt, wings_layers
from mlan.wings.save import FORMAT, FORMAT_VERSION, WINGS_CONFIG, WINGS_WEIGHTS

log = logging.getLogger(__name__)

__all__ = [
    "WINGS_CONFIG",
    "WINGS_WEIGHTS",
    "is_wings_dir",
    "load_wings_model",
    "load_wings_weights",
    "read_wings_config",
]


def is_wings_dir(path: str | Path) -> bool:
    """True when `path` is a folder written by `save_wings_model`."""
    return (Path(path).expanduser() / WINGS_CONFIG).is_file()


def load_wings_weights(model, path: str | Path) -> None:
    """Load the learner/router tensors of a Wings folder (or checkpoint) into a model that has Wings.

    For resuming training from a checkpoint written by `save_pretrained`: the Trainer restores
    the base weights itself and does not know about `wings.safetensors`.
    """
    from safetensors.torch import load_file

    weights = Path(path).expanduser() / WINGS_WEIGHTS
    if not weights.is_file():
        raise MlanError(f"{Path(path)}: Wings folder without learner weights ({WINGS_WEIGHTS})")
    state = load_file(str(weights))
    layers = wings_layers(model)
    for i, layer in layers.items():
        prefix = f"layers.{i}."
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        missing = sorted(set(layer.state_dict()) - set(own))
        if missing:
            raise MlanError(f"{weights}: no tensor {prefix}{missing[0]} (saved with other Wings settings?)")
        try:
            layer.load_state_dict(own, strict=True)
        except RuntimeError as e:
            raise MlanError(f"{weights}: layer {i}: {first_line(e)}") from None
    extra = sorted(k for k in state if int(k.split(".")[1]) not in layers)
    if extra:
        raise MlanError(f"{weights}: tensor {extra[0]} belongs to a layer without learners in this model")


def read_wings_config(path: str | Path) -> tuple[WingsConfig, dict]:
    """The `WingsConfig` and the raw metadata of a Wings folder; one-line errors for anything wrong."""
    f = Path(path).expanduser() / WINGS_CONFIG
    if not f.is_file():
        raise MlanError(f"{Path(path)}: not a Wings model folder (no {WINGS_CONFIG})")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MlanError(f"{f}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MlanError(f'{f}: not an mlan Wings config (expected "format": "{FORMAT}")')
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise MlanError(
            f"{f}: format version {meta['format_version']} is newer than this mlan supports ({FORMAT_VERSION})"
        )
    config = validate_config(meta.get("config") or {}, WingsConfig, source=f"{f}: config")
    # Checked here, before any weights load or a line is logged about the model being built.
    system = meta.get("system_prompt")
    if system is not None and not (isinstance(system, dict) and isinstance(system.get("ids"), list)):
        raise MlanError(f'{f}: system_prompt: expected null or {{"ids": [...], "bos_token_id": ...}}')
    return config, meta


def load_wings_model(path: str | Path, *, device: str | None = None, dtype: str | None = "auto"):
    """Open a folder written by `save_wings_model` (or a Wings model's `save_pretrained`).

    Returns `(model, processor)` in eval mode, exactly as saved. The paper's `attention` router
    loads the model with eager attention (it reads attention probabilities); the `modality`
    router keeps transformers' default kernel.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    p = Path(path).expanduser()
    config, meta = read_wings_config(p)
    if not (p / WINGS_WEIGHTS).is_file():
        raise MlanError(f"{p}: Wings folder without learner weights ({WINGS_WEIGHTS})")
    check_model_dir(p, need_processor=True)
    device = device or default_device()
    kwargs = {"dtype": resolve_dtype(dtype, device)}
    if config.router == "attention":
        kwargs["attn_implementation"] = "eager"
    model = LlavaForConditionalGeneration.from_pretrained(str(p), **kwargs)
    add_wings(model, config, use_router=bool(meta.get("use_router", True)))
    # The system prompt the learners were trained without, as saved (a folder from before it was
    # recorded trained its textual learner on all text, and keeps doing so).
    system = meta.get("system_prompt")
    if system:
        set_system_prompt(model, system.get("ids", []), system.get("bos_token_id"))
    load_wings_weights(model, p)
    processor = AutoProcessor.from_pretrained(str(p))
    return model.to(device).eval(), processor
