"""The model to train: loaded as the recipe says (dtype, attention kernel, 4-bit for QLoRA), then
made trainable in one of three ways: LoRA adapters (the PEFT config TRL applies), Wings learners
with their optimizer groups, or the recipe's freeze of whole components.

Light to import (torch, transformers, peft and mlan.wings inside the functions): `mlan.train.sft`
imports this module at its top, and `mlan.lab.run` imports that one at its top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.config.recipe import SFTRecipe
from mlan.train.freeze import apply_freeze, lora_target_regex
from mlan.train.model_info import ModelInfo

log = logging.getLogger(__name__)


@dataclass
class ModelToTrain:
    """The loaded model and how it trains: LoRA adapters (the PEFT config TRL applies), Wings learners
    (their optimizer groups), or neither (whole components frozen or trained)."""

    model: Any
    peft_config: Any = None
    wings_groups: list[dict] | None = None


def model_to_train(recipe: SFTRecipe, info: ModelInfo, cuda: bool, device_index: int, dtype: str) -> ModelToTrain:
    """The model in `dtype` (the precision plan's load dtype), made trainable as the recipe says; seeded
    first, so that every process and every run starts from the same state (LoRA init, dropout).

    Under DeepSpeed ZeRO-3 the Trainer's arguments, made before this, switch `from_pretrained` to
    DeepSpeed's `zero.Init`: every parameter is created partitioned over the processes, never whole on
    one of them."""
    from transformers import set_seed

    set_seed(recipe.training.seed)
    model = load_model(recipe, info, cuda, device_index, dtype)
    if recipe.wings is not None:
        return ModelToTrain(model, wings_groups=add_recipe_wings(model, recipe, info))
    if recipe.train.language_model in ("lora", "qlora"):
        for p in model.parameters():
            p.requires_grad_(False)
        return ModelToTrain(model, peft_config=lora_config(recipe, qwen=info.kind == kinds.QWEN2_5_VL))
    apply_freeze(model, recipe.train)
    return ModelToTrain(model)


def load_model(recipe: SFTRecipe, info: ModelInfo, cuda: bool, device_index: int, dtype: str):
    """The multimodal model from `info.path` (its kind's class); for QLoRA its language model in 4 bits on
    this process's device."""
    import torch

    kwargs: dict[str, Any] = {}
    if recipe.model.revision:
        kwargs["revision"] = recipe.model.revision
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    kwargs["dtype"] = getattr(torch, dtype)
    if recipe.train.language_model == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if cuda else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            # Only the LLM's linear layers are quantized; vision tower, projector and head stay exact.
            # transformers 5 matches these from the start of the full module name (or as a suffix),
            # so a bare "vision_tower" would not match "model.vision_tower.*".
            # Qwen2.5-VL's tower and merger are `model.visual.*`.
            llm_int8_skip_modules=[r".*vision_tower", r".*multi_modal_projector", r".*visual", "lm_head"],
        )
        kwargs["device_map"] = {"": device_index} if cuda else "cpu"
    model = info.model_class.from_pretrained(info.path, **kwargs)
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        # transformers 5.24 keeps, for saving, the key renamings a load used (core_model_loading), except
        # when DeepSpeed ZeRO-3 loads (integrations/deepspeed.py keeps all of them): reverting the unused ones
        # too wrote `language_model.model.model.*` keys that no load finds. Kept as a normal load keeps them;
        # tests/test_sft_engines.py reloads the saved model.
        model._weight_conversions = [c for c in conversions if c.was_used()]
    return model


def lora_config(recipe: SFTRecipe, qwen: bool = False):
    """The PEFT LoRA config: adapters on the language model's target layers; the projector and vision
    tower, when the recipe trains them, trained in full beside the adapters."""
    from peft import LoraConfig

    tr = recipe.train
    modules_to_save = []
    if tr.vision_tower and qwen:
        modules_to_save.append("visual")  # Qwen2.5-VL's tower holds its projector (`visual.merger`)
    elif tr.projector and qwen:
        modules_to_save.append("merger")
    else:
        if tr.projector:
            modules_to_save.append("multi_modal_projector")
        if tr.vision_tower:
            modules_to_save.append("vision_tower")
    return LoraConfig(
        r=tr.lora.r,
        lora_alpha=tr.lora.alpha,
        lora_dropout=tr.lora.dropout,
        target_modules=lora_target_regex(tr.lora.target_modules),
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def add_recipe_wings(model, recipe: SFTRecipe, info: ModelInfo) -> list[dict]:
    """Add the recipe's Wings learners (restored from `info.path` when it is a Wings folder); the stage's
    optimizer groups (this also sets what trains and whether the router is used). The system prompt of
    the template the rows are rendered with is left out of the textual learner's keys."""
    from transformers import set_seed

    from mlan.wings import add_wings, is_wings_dir, load_wings_weights, wings_parameter_groups

    config = recipe.wings.learner_config()
    path = info.path
    # Seeded again here: how much randomness loading the model drew differs by engine (DeepSpeed's ZeRO-3
    # init draws none), and the learners' initial weights must not.
    set_seed(recipe.training.seed)
    add_wings(model, config, processor=info.processor, chat_template=info.chat_template)
    if Path(path).is_dir() and is_wings_dir(path):
        # from_pretrained read the base only; the learners of the earlier stage live beside it.
        load_wings_weights(model, path)
        log.info("Wings: learners restored from %s", path)
    return wings_parameter_groups(model, recipe.wings.stage, config)


def upcast_trainable(model) -> None:
    """Cast every trainable 16-bit parameter to fp32 in place (the precision plan's fp32 masters on one
    process or DDP; the forward runs under the Trainer's bf16/fp16 autocast). Done once the Trainer has
    added LoRA adapters (PEFT's `modules_to_save` copies load 16-bit) and before it makes the optimizer,
    whose states then follow the parameters' fp32."""
    import torch

    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()
