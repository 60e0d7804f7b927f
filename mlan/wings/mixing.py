"""One Wings layer's contribution: `w_v * LoRRA_v(h) + w_t * LoRRA_t(h)`, with the router's weights.

Called by the attention hook of `mlan.wings.runtime` with the forward's shared context. Each learner's
output is added once: Wings' layer adds the routed outputs twice, once masked and once not
(AIDC-AI/Wings@5dec325:wings/model/modeling_wings_llama.py:184-198), a defect not copied here.
"""

from __future__ import annotations

from typing import Protocol

import torch

from mlan.config.wings import WingsConfig
from mlan.errors import MlanError
from mlan.wings.layer import ForwardContext, WingsLayer
from mlan.wings.lorra import rotate
from mlan.wings.router import Router, modality_features_from_probs, modality_features_sdpa


class Routing(Protocol):
    """What the mixing reads of the model's Wings runtime (`mlan.wings.runtime.WingsRuntime`)."""

    use_router: bool
    config: WingsConfig

    @property
    def attn_implementation(self) -> str: ...


def learners_delta(layer, runtime: Routing, ctx: ForwardContext, h, probs, captured):
    """w_v * LoRRA_v(h) + w_t * LoRRA_t(h) for one layer (None when no learner has any key)."""
    wings: WingsLayer = layer.wings
    idx = layer.self_attn.layer_idx
    cos, sin = ctx.cos, ctx.sin
    routed = runtime.use_router and ctx.any_image
    outputs = {}
    for name, learner in (("visual", wings.visual), ("textual", wings.textual)):
        keys = ctx.keys[name]
        if keys is None or (name == "visual" and not ctx.any_image):
            continue
        k, v = learner.keys_values(keys.x, keys.cos, keys.sin)
        if ctx.state is not None:
            old = ctx.state.kv.get((idx, name))
            if old is not None:
                k, v = torch.cat((old[0], k), dim=2), torch.cat((old[1], v), dim=2)
            ctx.state.kv[(idx, name)] = (k, v)
        outputs[name] = learner(h, cos, sin, k, v, keys.mask, keys.keep)
    if "textual" not in outputs and "visual" not in outputs:
        return None
    if routed:
        weights = _route(layer, runtime, ctx, probs, captured)
        w_v, w_t = weights[..., 0:1], weights[..., 1:2]
    else:
        # Stage 1 (and rows without images): the learners' outputs are added directly.
        w_v = ctx.has_image.to(h.dtype)[:, None, None]
        w_t = None
    delta = None
    if "visual" in outputs:
        delta = w_v * outputs["visual"]
    if "textual" in outputs:
        t = outputs["textual"] if w_t is None else w_t * outputs["textual"]
        delta = t if delta is None else delta + t
    return delta


def _route(layer, runtime: Routing, ctx: ForwardContext, probs, captured) -> torch.Tensor:
    """Router weights (B, L, 2) of one layer from its main attention."""
    config = runtime.config
    router: Router = layer.wings.router
    attn = layer.self_attn
    if config.router == "attention":
        if probs is None:
            raise MlanError(
                f"Wings router 'attention' needs eager attention probabilities, but the model uses "
                f"{runtime.attn_implementation!r}: load it with attn_implementation='eager' or use router: modality"
            )
        return router.forward_positions(probs, ctx.positions_all, ctx.has_image)
    return router(_modality_features(attn, ctx, probs, captured), ctx.has_image)


def _modality_features(attn, ctx: ForwardContext, probs, captured) -> torch.Tensor:
    if probs is not None:
        return modality_features_from_probs(probs, ctx.image_all)
    b, n, _ = captured["q"].shape
    head_dim = attn.head_dim
    q = rotate(captured["q"].view(b, n, -1, head_dim).transpose(1, 2), ctx.cos, ctx.sin)
    k = rotate(captured["k"].view(b, n, -1, head_dim).transpose(1, 2), ctx.cos, ctx.sin)
    if ctx.state is not None:
        # With a KV cache the router needs the main keys of past tokens too. The learners keep their
        # own copy (one layer's keys, only for this router on a fused kernel) instead of reading the
        # cache's storage, whose layout is not public API and has changed between releases.
        old = ctx.state.main_keys.get(attn.layer_idx)
        k = k if old is None else torch.cat((old, k), dim=2)
        ctx.state.main_keys[attn.layer_idx] = k
    scale = getattr(attn, "scaling", head_dim**-0.5)
    return modality_features_sdpa(q, k.to(q.dtype), ctx.image_all, ctx.main_mask, scale)
