"""Adding Wings to a LLaVA-style model and training it in two stages.

`add_wings` checks the model, adds a `WingsLayer` to each chosen decoder layer and attaches the
runtime (`mlan.wings.runtime`: hooks, side inputs, KV cache); `wings_parameter_groups` sets what
trains in each stage and at which rate.
"""

from __future__ import annotations

import logging
import types

from torch import nn

from mlan.config.wings import WingsConfig
from mlan.errors import MlanError
from mlan.wings.layer import WingsLayer
from mlan.wings.runtime import (
    WingsRuntime,
    get_runtime,
    require_runtime,
    set_routing,
    set_system_prompt,
    wings_layers,
    wings_parameters,
)
from mlan.wings.save import wings_save_pretrained
from mlan.wings.system import system_prompt_ids

log = logging.getLogger(__name__)

LLAMA_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}


def resolve_layers(config: WingsConfig, num_layers: int) -> list[int]:
    """The 0-based layer indices that get learners; an index out of range is a user error."""
    if config.layers == "all":
        return list(range(num_layers))
    bad = [i for i in config.layers if i >= num_layers]
    if bad:
        raise MlanError(
            f"wings.layers: layer index {bad[0]} is out of range (the language model has {num_layers} layers: 0-{num_layers - 1})"
        )
    return list(config.layers)


def check_llava(model) -> None:
    """Fail with one line unless `model` is a LLaVA-style model with Llama-style decoder layers."""
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("vision_tower", "multi_modal_projector", "language_model")):
        raise MlanError(
            f"Wings: expected a LLaVA-style model (vision tower + projector + language model, e.g. "
            f"LlavaForConditionalGeneration), got {type(model).__name__}"
        )
    layers = getattr(inner.language_model, "layers", None)
    if not layers:
        raise MlanError(f"Wings: the language model {type(inner.language_model).__name__} has no decoder layers")
    children = {name for name, _ in layers[0].named_children()}
    if children != LLAMA_LAYER_CHILDREN:
        raise MlanError(
            f"Wings: decoder layer {type(layers[0]).__name__} is not Llama-style "
            f"(expected children {sorted(LLAMA_LAYER_CHILDREN)}, got {sorted(children)})"
        )
    if not hasattr(inner.language_model, "rotary_emb"):
        raise MlanError("Wings: the language model has no shared rotary embedding (rotary_emb)")


def check_router_kernel(config: WingsConfig, attn_implementation: str) -> None:
    """The paper's router reads attention probabilities, which only eager attention returns."""
    if config.router == "attention" and attn_implementation != "eager":
        raise MlanError(
            f"wings.router: 'attention' needs eager attention, but the model uses {attn_implementation!r}: "
            "load it with attn_implementation='eager' or use router: modality"
        )


def add_wings(model, config: WingsConfig | None = None, *, use_router: bool = True, processor=None, chat_template=None):
    """Add Wings learners (and routers) to a LLaVA-style model in place and return it.

    With fresh learners the model's outputs are unchanged (bit for bit). `use_router=False`
    adds the learners' outputs directly (stage 1); `wings_parameter_groups` switches it per stage.
    With `processor`, the system prompt its chat template (or `chat_template`) writes is left out of
    the textual learner's keys, as in Wings' code; without it the textual learner sees all text
    (`set_system_prompt` sets it later).
    """
    config = config or WingsConfig()
    if get_runtime(model) is not None:
        raise MlanError("Wings: the model already has Wings learners")
    check_llava(model)
    lm = model.model.language_model
    text_config = model.config.text_config
    layers = resolve_layers(config, len(lm.layers))
    attn_impl = getattr(lm.config, "_attn_implementation", None) or "eager"
    check_router_kernel(config, attn_impl)
    hidden = text_config.hidden_size
    head_dim = lm.layers[0].self_attn.head_dim
    if hidden % head_dim:
        raise MlanError(f"Wings: hidden size {hidden} is not a multiple of the head size {head_dim}")
    main_heads = text_config.num_attention_heads
    for i in layers:
        layer = lm.layers[i]
        ref = next(layer.parameters())
        layer.wings = WingsLayer(hidden, hidden // head_dim, head_dim, main_heads, config).to(ref.device, ref.dtype)
    # A plain attribute, not a submodule: the runtime must not appear in state dicts.
    model.__dict__["_wings_runtime"] = WingsRuntime(model, config, layers, use_router)
    # Every save (the Trainer's checkpoints too) keeps the base a standard LLaVA folder.
    model.save_pretrained = types.MethodType(wings_save_pretrained, model)
    if processor is not None:
        tokenizer = getattr(processor, "tokenizer", processor)
        set_system_prompt(model, system_prompt_ids(processor, chat_template), tokenizer.bos_token_id)
    n = sum(p.numel() for p in wings_parameters(model))
    system = get_runtime(model).system_ids
    log.info(
        "Wings: %d learner/router parameters on %d layers (rank %d, router %s); textual learner: %s",
        *(n, len(layers), config.rank, config.router),
        "all text" if system is None else f"text without the {len(system)}-token system prompt",
    )
    return model


def wings_parameter_groups(model, stage: int, config: WingsConfig | None = None) -> list[dict]:
    """Optimizer parameter groups for a Wings training stage; also sets trainability and routing.

    Stage 1: projector + visual learners train (learners added directly, no router); language
    model, textual learners, routers and vision tower are frozen. Stage 2: visual + textual
    learners, routers, the full language model (embeddings and head included) and the projector
    (at its own rate) train; the vision tower is frozen. Each group is
    `{"name", "params", "lr"}`, ready for `torch.optim.AdamW(groups)`.
    """
    runtime = require_runtime(model)
    config = config or runtime.config
    if stage not in (1, 2):
        raise MlanError(f"wings stage {stage!r}: expected 1 or 2")
    for p in model.parameters():
        p.requires_grad_(False)
    layers = wings_layers(model)
    projector = list(model.model.multi_modal_projector.parameters())
    visual = [p for w in layers.values() for p in w.visual.parameters()]
    if stage == 1:
        set_routing(model, False)
        groups = [
            {"name": "projector", "params": projector, "lr": config.stage1.projector},
            {"name": "visual_learners", "params": visual, "lr": config.stage1.visual_learners},
        ]
    else:
        set_routing(model, True)
        textual = [p for w in layers.values() for p in w.textual.parameters()]
        router = [p for w in layers.values() for p in w.router.parameters()]
        taken = {id(p) for p in visual + textual + router}
        llm: list[nn.Parameter] = []
        seen: set[int] = set()
        for p in list(model.model.language_model.parameters()) + list(model.lm_head.parameters()):
            if id(p) not in taken and id(p) not in seen:  # tied embeddings appear twice
                seen.add(id(p))
                llm.append(p)
        groups = [
            {"name": "language_model", "params": llm, "lr": config.stage2.language_model},
            {"name": "projector", "params": projector, "lr": config.stage2.projector},
            {"name": "learners", "params": visual + textual, "lr": config.stage2.learners},
            {"name": "router", "params": router, "lr": config.stage2.router},
        ]
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return groups
