"""Saving and loading Wings models: a standard LLaVA folder plus the learners stored apart.

Folder layout:
- everything `LlavaForConditionalGeneration.save_pretrained` + the processor write (the base model,
  loadable on its own by any LLaVA tooling, without the learners);
- `wings.safetensors`: learner and router parameters, keys `layers.<i>.<visual|textual|router>.<name>`;
- `wings_config.json`: the `WingsConfig`, the routing mode and the layer indices.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from mlan.config.base import validate_config
from mlan.config.wings import WingsConfig
from mlan.errors import MlanError, first_line
from mlan.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

WINGS_WEIGHTS = "wings.safetensors"
WINGS_CONFIG = "wings_config.json"
FORMAT = "mlan-wings"
FORMAT_VERSION = 1


def is_wings_dir(path: str | Path) -> bool:
    """True when `path` is a folder written by `save_wings_model`."""
    return (Path(path).expanduser() / WINGS_CONFIG).is_file()


def wings_state_dict(model) -> dict:
    """Learner and router tensors keyed `layers.<i>.<submodule>.<name>` (detached, contiguous, on CPU)."""
    from mlan.wings.model import wings_layers

    out = {}
    for i, layer in wings_layers(model).items():
        for name, tensor in layer.state_dict().items():
            out[f"layers.{i}.{name}"] = tensor.detach().contiguous().cpu()
    return out


@contextlib.contextmanager
def _without_learners(model):
    """Detach the `wings` submodules for the duration, so that the base saves as a plain LLaVA model."""
    from mlan.wings.model import get_runtime

    runtime = get_runtime(model)
    layers = runtime.language_model.layers
    detached = {i: layers[i]._modules.pop("wings") for i in runtime.layer_ids}
    try:
        yield
    finally:
        for i, module in detached.items():
            layers[i]._modules["wings"] = module


def write_wings_files(model, folder: str | Path) -> None:
    """Write `wings.safetensors` and `wings_config.json` of `model` into an existing folder."""
    from safetensors.torch import save_file

    from mlan.wings.model import _require

    runtime = _require(model)
    folder = Path(folder)
    save_file(wings_state_dict(model), str(folder / WINGS_WEIGHTS), metadata={"format": "pt"})
    atomic_write_json(
        folder / WINGS_CONFIG,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": runtime.config.model_dump(mode="json"),
            "use_router": runtime.use_router,
            "layers": runtime.layer_ids,
        },
    )


def wings_save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
    """`save_pretrained` of a Wings model (installed on the instance by `add_wings`).

    Every caller, the Trainer's checkpoints included, gets the Wings folder layout: the base
    weights as a standard LLaVA folder (learner tensors filtered out of a given `state_dict`),
    the learners beside it.
    """
    if state_dict is not None:
        state_dict = {k: v for k, v in state_dict.items() if ".wings." not in k}
    with _without_learners(self):
        type(self).save_pretrained(self, save_directory, *args, state_dict=state_dict, **kwargs)
    if kwargs.get("is_main_process", True):
        write_wings_files(self, save_directory)


def save_wings_model(model, out: str | Path, processor=None, *, overwrite: bool = False) -> Path:
    """Write a Wings model: base LLaVA folder (+ processor when given), `wings.safetensors`, `wings_config.json`."""
    from mlan.wings.model import _require

    _require(model)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        wings_save_pretrained(model, tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
    log.info("Wings model written to %s", out)
    return out


def load_wings_weights(model, path: str | Path) -> None:
    """Load the learner/router tensors of a Wings folder (or checkpoint) into a model that has Wings.

    For resuming training from a checkpoint written by `save_pretrained`: the Trainer restores
    the base weights itself and does not know about `wings.safetensors`.
    """
    from safetensors.torch import load_file

    from mlan.wings.model import wings_layers

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
    return validate_config(meta.get("config") or {}, WingsConfig, source=f"{f}: config"), meta


def load_wings_model(path: str | Path, *, device: str | None = None, dtype: str | None = "auto"):
    """Open a folder written by `save_wings_model` (or a Wings model's `save_pretrained`).

    Returns `(model, processor)` in eval mode, exactly as saved. The paper's `attention` router
    loads the model with eager attention (it reads attention probabilities); the `modality`
    router keeps transformers' default kernel.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mlan.models import check_model_dir, default_device, resolve_dtype
    from mlan.wings.model import add_wings

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
    load_wings_weights(model, p)
    processor = AutoProcessor.from_pretrained(str(p))
    return model.to(device).eval(), processor
