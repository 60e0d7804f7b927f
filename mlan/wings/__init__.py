"""Wings (Zhang et al. 2024): low-rank visual and textual learners with a router, for LLaVA-style models.

Public API:

- `add_wings(model, config, processor=...) -> model`: add learners and routers to a `LlavaForConditionalGeneration`
  in place (with the processor, its chat template's system prompt is left out of the textual learner's keys).
- `wings_parameter_groups(model, stage, config) -> list[dict]`: optimizer groups for stage 1 or 2.
- `save_wings_model(model, out, processor)`: a standard LLaVA folder + `wings.safetensors` + `wings_config.json`.
- `load_wings_model(path) -> (model, processor)`: open such a folder again, exactly.
- `load_wings_weights(model, path)`: restore learners from a folder/checkpoint into a Wings model (resume).

A Wings model's own `save_pretrained` (so the Trainer's checkpoints too) writes the same layout.
"""

from mlan.config.wings import WingsConfig
from mlan.wings.io import is_wings_dir, load_wings_model, load_wings_weights
from mlan.wings.model import add_wings, wings_parameter_groups
from mlan.wings.runtime import get_runtime, set_routing, set_system_prompt, wings_layers, wings_parameters
from mlan.wings.save import save_wings_model, wings_state_dict
from mlan.wings.system import system_prompt_ids

__all__ = [
    "WingsConfig",
    "add_wings",
    "get_runtime",
    "is_wings_dir",
    "load_wings_model",
    "load_wings_weights",
    "save_wings_model",
    "set_routing",
    "set_system_prompt",
    "system_prompt_ids",
    "wings_layers",
    "wings_parameter_groups",
    "wings_parameters",
    "wings_state_dict",
]
