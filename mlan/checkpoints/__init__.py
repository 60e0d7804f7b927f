"""Checkpoints from elsewhere made into Hugging Face LLaVA folders that every mlan stage opens.

- `assemble`: an LLM + a CLIP vision tower + a projector (fresh, or a released stage-1
  `mm_projector.bin`), as LLaVA-1.5 puts a stage-1 model together;
- `convert`: a checkpoint in the LLaVA project's own layout (`LlavaLlamaForCausalLM`).

Both write the same kind of folder (llava-hf's: `<image>` and `<pad>` tokens, the Vicuna-v1 chat
template with `{% generation %}` markers, a model card) through `mlan.checkpoints.build`.
"""

from mlan.checkpoints.assemble import assemble
from mlan.checkpoints.build import DEFAULT_VISION_TOWER, BuildResult
from mlan.checkpoints.convert import convert
from mlan.checkpoints.original import is_original_llava_config

__all__ = ["DEFAULT_VISION_TOWER", "BuildResult", "assemble", "convert", "is_original_llava_config"]
