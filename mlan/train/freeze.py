"""What is trained in a LLaVA model: freezing by component, LoRA targets, the parameter report.

transformers 5 names a LlavaForConditionalGeneration's parameters `model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.language_model.*` and `lm_head.*` (LLaVA-NeXT and -OneVision
too, plus `model.image_newline`, which trains with the projector as in LLaVA-NeXT); Qwen2.5-VL's are
`model.visual.*` (its projector: `model.visual.merger.*`), `model.language_model.*` and `lm_head.*`; a PEFT
wrapper adds a `base_model.model.` prefix. Components are recognised by those name parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlan.config.recipe import TrainSection
from mlan.errors import MlanError

COMPONENTS = ("vision_tower", "projector", "language_model", "lm_head", "lora", "wings")


def component_of(name: str) -> str:
    """The component a parameter belongs to (LoRA adapter weights are their own component)."""
    if "lora_" in name:
        return "lora"
    if ".wings." in name:  # Wings learners and routers sit inside the decoder layers, but are their own part
        return "wings"
    if "multi_modal_projector" in name or "visual.merger." in name or "image_newline" in name:
        return "projector"
    if "vision_tower" in name or name.startswith("visual.") or ".visual." in name:
        return "vision_tower"
    if "lm_head" in name:
        return "lm_head"
    return "language_model"


def apply_freeze(model, train: TrainSection) -> None:
    """Set requires_grad per component for full / frozen language-model training.

    Nothing is frozen by transformers or TRL on their own: a vision tower left trainable on
    text-only batches gets no gradient, wastes optimizer memory and breaks DDP (TRL #6617).
    For LoRA/QLoRA, PEFT freezes the base model and the projector is kept trainable through
    `modules_to_save` instead.
    """
    wanted = {
        "vision_tower": train.vision_tower,
        "projector": train.projector,
        "language_model": train.language_model == "full",
        "lm_head": train.language_model == "full",
    }
    for name, p in model.named_parameters():
        p.requires_grad_(wanted.get(component_of(name), False))


def parameter_report(model) -> dict[str, dict[str, int]]:
    """Total and trainable parameter counts per component, plus an `all` row."""
    report = {c: {"total": 0, "trainable": 0} for c in (*COMPONENTS, "all")}
    for name, p in model.named_parameters():
        # Under DeepSpeed ZeRO-3 a parameter holds nothing outside a gather (numel() is 0): its full size
        # is `ds_numel`.
        n = getattr(p, "ds_numel", None) or p.numel()
        # A 4-bit weight stores two values per byte: count the values, not the storage.
        if p.__class__.__name__ == "Params4bit":
            n = int(p.quant_state.shape.numel()) if getattr(p, "quant_state", None) is not None else n * 2
        for key in (component_of(name), "all"):
            report[key]["total"] += n
            if p.requires_grad:
                report[key]["trainable"] += n
    return {k: v for k, v in report.items() if v["total"]}


def lora_target_regex(targets: Iterable[str]) -> str:
    """A PEFT `target_modules` regex (full match on module names) for layers inside the language model only.

    PEFT's `all-linear` and plain name lists also wrap the vision tower and projector, whose
    layers share names like `q_proj` / `fc1` with the LLM.
    """
    names = "|".join(re.escape(t) for t in targets)
    return rf"(?:.*\.)?language_model\.(?:.*\.)?(?:{names})"


def check_lora_targets(model, targets: list[str]) -> list[str]:
    """Names of the linear layers the LoRA targets match; an empty match is a user error."""
    import torch

    pattern = re.compile(lora_target_regex(targets))
    matched = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    if not matched:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "language_model" in n
            }
        )
        raise MlanError(
            f"train.lora.target_modules {targets}: match no linear layer of the language model "
            f"(its linear layers: {', '.join(linear)})"
        )
    return matched
