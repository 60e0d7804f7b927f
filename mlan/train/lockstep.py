"""Every process runs the image path every step under DeepSpeed ZeRO-3 and FSDP2.

Both engines keep each parameter in pieces and gather it, in a collective call that every process must
make, when its module runs. A step where one process holds an image row and another only text rows
would have one process gather the vision tower's and projector's weights and the other not: the
collectives no longer match and the run dies (gloo: "Received data size doesn't match expected size")
or hangs. LLaVA's own code never meets this: its dataset gives every text-only row a blank image and
its model encodes every row's image, using none of a text row's features
(haotian-liu/LLaVA llava/train/train.py `LazySupervisedDataset.__getitem__`, "image does not exist in
the data, but the model is multimodal"). mlan does the same at the model: before the forward of a
batch without images, a blank image (the processor's own output for it, so every model kind gets the
inputs its image path takes) runs through the model's `get_image_features`, and its features join the
graph multiplied by zero. The loss, the gradients and the outputs are unchanged; only the gathers and
the gradient reductions happen on every process alike.

Light to import (torch and PIL inside the functions).
"""

from __future__ import annotations

import inspect
from typing import Any


def blank_image_inputs(processor) -> dict[str, Any]:
    """What the processor makes of one small blank image: pixel_values and, per model kind, image_sizes or
    image_grid_thw (the inputs of `get_image_features`)."""
    from PIL import Image

    size = getattr(processor.image_processor, "size", None) or {}
    side = int(size.get("height") or size.get("shortest_edge") or 32) if isinstance(size, dict) else 32
    out = processor.image_processor(images=[Image.new("RGB", (side, side))], return_tensors="pt")
    return {k: v for k, v in out.items() if k in ("pixel_values", "image_sizes", "image_grid_thw")}


def _features(output) -> list:
    """The image feature tensors `get_image_features` returned (its pooler_output, a tensor or a list)."""
    feats = getattr(output, "pooler_output", output)
    if isinstance(feats, (list, tuple)):
        return [f for f in feats if hasattr(f, "sum")]
    return [feats]


def install_lockstep(model, processor) -> None:
    """Make every forward of `model` (a multimodal model) run its image path, on a blank image when the
    batch has none, where the model's own forward runs it: after the token embeddings, before the language
    model, whose input then depends on the features as it does through the image tokens. Both engines
    also follow the order modules run in forward and backward, which must be the same on every process."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "get_image_features") or not hasattr(inner, "language_model"):
        return
    blank = blank_image_inputs(processor)
    accepted = set(inspect.signature(inner.get_image_features).parameters)
    blank = {k: v for k, v in blank.items() if k in accepted}
    pending = {"blank": False}

    def before(module, args, kwargs):
        pending["blank"] = kwargs.get("pixel_values") is None and kwargs.get("input_ids") is not None

    def after(module, args, kwargs, output):
        pending["blank"] = False

    def language_input(language_model, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if not pending["blank"] or embeds is None:
            return None
        pending["blank"] = False
        inputs = {k: v.to(embeds.device) for k, v in blank.items()}  # the towers cast pixels themselves
        zero = sum(f.sum() for f in _features(inner.get_image_features(**inputs))) * 0
        return args, {**kwargs, "inputs_embeds": embeds + zero.to(embeds.dtype)}

    inner.register_forward_pre_hook(before, with_kwargs=True)
    inner.register_forward_hook(after, with_kwargs=True)
    inner.language_model.register_forward_pre_hook(language_input, with_kwargs=True)
