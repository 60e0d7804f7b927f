"""Writing Wings models: a standard LLaVA folder plus the learners stored apart.

Folder layout:
- everything `LlavaForConditionalGeneration.save_pretrained` + the processor write (the base model,
  loadable on its own by any LLaVA tooling, without the learners);
- `wings.safetensors`: learner and router parameters, keys `layers.<i>.<visual|textual|router>.<name>`;
- `wings_config.json`: the `WingsConfig`, the routing mode, the layer indices and the system prompt's token
  ids that the textual learner leaves out.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from mlan import kinds
from mlan.io import atomic_dir, atomic_write_json
from mlan.wings.runtime import get_runtime, require_runtime, wings_layers

log = logging.getLogger(__name__)

WINGS_WEIGHTS = "wings.safetensors"
WINGS_CONFIG = kinds.WINGS_CONFIG
FORMAT = "mlan-wings"
FORMAT_VERSION = 1


def wings_state_dict(model) -> dict:
    """Learner and router tensors keyed `layers.<i>.<submodule>.<name>` (detached, contiguous, on CPU)."""
    out = {}
    for i, layer in wings_layers(model).items():
        for name, tensor in layer.state_dict().items():
            out[f"layers.{i}.{name}"] = tensor.detach().contiguous().cpu()
    return out


@contextlib.contextmanager
def _without_learners(model):
    """Detach the `wings` submodules for the duration, so that the base saves as a plain LLaVA model."""
    runtime = get_runtime(model)
    layers = runtime.language_model.layers
    detached = {i: layers[i]._modules.pop("wings") for i in runtime.layer_ids}
    try:
        yield
    finally:
        for i, module in detached.items():
            layers[i]._modules["wings"] = module


_LEARNER_KEY = re.compile(r"(?:^|.*\.)layers\.(\d+)\.wings\.(.+)")


def learners_from_state_dict(state_dict: dict) -> dict:
    """The learner and router tensors of a whole model's state dict, keyed as `wings_state_dict` keys them.

    Under DeepSpeed ZeRO-3 and FSDP the module's own parameters hold only this process's shard; the
    Trainer hands `save_pretrained` the gathered state dict, which is where the learners must come from."""
    out = {}
    for key, tensor in state_dict.items():
        m = _LEARNER_KEY.fullmatch(key)
        if m:
            out[f"layers.{m.group(1)}.{m.group(2)}"] = tensor.detach().contiguous().cpu()
    return out


def write_wings_files(model, folder: str | Path, learners: dict | None = None) -> None:
    """Write `wings.safetensors` and `wings_config.json` of `model` into an existing folder; `learners`:
    the tensors to write (`learners_from_state_dict`), else read from the model itself."""
    from safetensors.torch import save_file

    runtime = require_runtime(model)
    folder = Path(folder)
    tensors = learners if learners is not None else wings_state_dict(model)
    save_file(tensors, str(folder / WINGS_WEIGHTS), metadata={"format": "pt"})
    atomic_write_json(
        folder / WINGS_CONFIG,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": runtime.config.model_dump(mode="json"),
            "use_router": runtime.use_router,
            "layers": runtime.layer_ids,
            # What the textual learner left out (mlan.wings.system); null: nothing (older folders lack the key).
            "system_prompt": None
            if runtime.system_ids is None
            else {"ids": list(runtime.system_ids), "bos_token_id": runtime.bos_id},
        },
    )


def wings_save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
    """`save_pretrained` of a Wings model (installed on the instance by `add_wings`).

    Every caller, the Trainer's checkpoints included, gets the Wings folder layout: the base
    weights as a standard LLaVA folder (learner tensors filtered out of a given `state_dict`),
    the learners beside it.
    """
    learners = None
    if state_dict is not None:
        learners = learners_from_state_dict(state_dict) or None
        state_dict = {k: v for k, v in state_dict.items() if ".wings." not in k}
    with _without_learners(self):
        type(self).save_pretrained(self, save_directory, *args, state_dict=state_dict, **kwargs)
    if kwargs.get("is_main_process", True):
        write_wings_files(self, save_directory, learners)


def save_wings_model(model, out: str | Path, processor=None, *, overwrite: bool = False) -> Path:
    """Write a Wings model: base LLaVA folder (+ processor when given), `wings.safetensors`, `wings_config.json`."""
    require_runtime(model)
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        wings_save_pretrained(model, tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
    log.info("Wings model written to %s", out)
    return out
