"""Wings on a LLaVA-style model: learners and router per decoder layer, side inputs, KV cache.

How it attaches (public PyTorch module hooks only: no copy of transformers model code, no
replaced `forward`, no private attention helpers or cache internals):

- Each chosen decoder layer gets a `wings` submodule (`WingsLayer`: visual + textual LoRRA and
  a router). A forward hook on the layer's attention turns its output `a` into
  `a + w_v * LoRRA_v(H) + w_t * LoRRA_t(H)` with `H = layer input + a`, the hidden state after the
  attention residual: the layer then adds it to its residual stream, so the learners are added
  once, before the MLP's layer norm. The base weights keep their names, so the base saves as a
  standard LLaVA folder.
- Side inputs travel as keyword arguments, not global state: a pre-hook on `LlavaModel` adds
  the image-token mask, a pre-hook on the language model turns it and the input embeddings
  into a `_Chunk` that transformers passes down to every decoder layer (its `**kwargs`, the
  channel transformers documents for extra attention inputs). A pre-hook on each decoder layer
  takes it out again (no attention kernel sees it) and hands the Wings layer's input to its
  attention hooks. Gradient checkpointing replays a layer with the same keyword arguments, so
  its side inputs stay right even when another forward ran in between.
- The one transformers detail read by name, the decoder layers' cache argument (`cache` since
  5.24, `past_key_values` before), lives in `_layer_cache`, with a test that checks it.
- Visual keys/values are the projector's image features: LLaVA scatters them into the input
  embeddings at the image-token positions, so they are read there (multi-image and mixed
  batches need no extra bookkeeping). Textual keys/values are the embeddings of the other
  non-padding tokens, causally masked.
- KV cache: the learners keep their own keys/values for past tokens beside the main cache
  (weakly keyed by the cache object, whose length is read with the public `get_seq_length`),
  so generation with the cache gives the same tokens as without it. Not supported: beam search and cache cropping (the learners'
  cache is not reordered or cut; an error says so), static caches and 4D attention masks.
- The visual learner is unmasked, as in the paper: a query also sees image tokens that come
  after it in the same forward. With a cache, a later chunk that brings a new image is not seen
  by the earlier tokens (generation, whose images all sit in the prompt, is unaffected).
- DDP: a batch without images leaves the visual learners unused (set find_unused_parameters).
"""

from __future__ import annotations

import logging
import types
import weakref
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from mlan.config.wings import WingsConfig
from mlan.errors import MlanError
from mlan.wings.lorra import LoRRA, rotate
from mlan.wings.router import Router, modality_features_from_probs, modality_features_sdpa

log = logging.getLogger(__name__)

LLAMA_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_CHUNK_KW = "wings_chunk"
_IMAGE_KW = "wings_image_mask"


class WingsLayer(nn.Module):
    """The visual learner, textual learner and router of one decoder layer."""

    def __init__(self, hidden: int, heads: int, head_dim: int, main_heads: int, config: WingsConfig):
        super().__init__()
        self.visual = LoRRA(hidden, heads, head_dim, config.rank, config.init_std)
        self.textual = LoRRA(hidden, heads, head_dim, config.rank, config.init_std)
        features = 2 * main_heads if config.router == "modality" else config.router_max_positions
        self.router = Router(features, config.init_std)


@dataclass
class _Keys:
    """One learner's keys for the current forward: the new tokens' inputs plus the visibility mask."""

    x: torch.Tensor  # (B, n_new, d) key/value inputs of the new tokens
    cos: torch.Tensor  # rotary cos/sin at the new keys' positions
    sin: torch.Tensor
    mask: torch.Tensor  # (B, 1, L or 1, n_past + n_new) additive: 0 where visible, -inf elsewhere
    keep: torch.Tensor  # (B, 1, L or 1, 1): 0 where a query sees no key at all


@dataclass
class _CacheState:
    """What the learners remember across forwards that share one `past_key_values`."""

    length: int = 0
    image: torch.Tensor | None = None  # (B, S) per slot: image token
    valid: torch.Tensor | None = None  # (B, S) per slot: not padding
    positions: torch.Tensor | None = None  # (B, S) per slot: rotary position
    keys_meta: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # learner -> (valid, slot)
    kv: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    main_keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> main branch's rotated keys


@dataclass
class _Context:
    """Everything the Wings layers of one forward share (built once, by the first of them)."""

    past: int
    positions: torch.Tensor  # (B, L) rotary positions of the new tokens
    cos: torch.Tensor  # rotary cos/sin of the new tokens (the queries), from the model's own rotary module
    sin: torch.Tensor
    query_slots: torch.Tensor  # (L,)
    has_image: torch.Tensor  # (B,)
    any_image: bool
    image_all: torch.Tensor  # (B, S) image keys of the main attention (past + new)
    positions_all: torch.Tensor  # (B, S)
    main_mask: torch.Tensor | None  # (B, 1, L, S) additive: what the main attention lets each query see
    keys: dict[str, _Keys | None]
    state: _CacheState | None


@dataclass
class _Chunk:
    """Side inputs of one language-model forward, passed to the decoder layers as a keyword argument."""

    x: torch.Tensor  # (B, L, d) input embeddings (image features at image positions)
    image: torch.Tensor  # (B, L) bool
    mask2d: torch.Tensor | None
    context: _Context | None = None


class WingsRuntime:
    """Per-model Wings state that is not a parameter: config, routing mode, hooks, cache states."""

    def __init__(self, model, config: WingsConfig, layer_ids: list[int], use_router: bool):
        self.config = config
        self.layer_ids = layer_ids
        self.layer_set = frozenset(layer_ids)
        self.use_router = use_router
        self.image_token_id = _image_token_id(model.config)
        self.language_model = model.model.language_model
        self.text_config = model.config.text_config
        self.caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.pending: dict[int, _Pending] = {}
        self.hooks = [
            model.model.register_forward_pre_hook(self._llava_pre_hook, with_kwargs=True),
            self.language_model.register_forward_pre_hook(self._lm_pre_hook, with_kwargs=True),
        ]
        # Public PyTorch hooks only; the decoder layers and their attention keep their own forward.
        for i, layer in enumerate(self.language_model.layers):
            self.hooks.append(layer.register_forward_pre_hook(partial(_layer_pre_hook, self, i), with_kwargs=True))
            if i in self.layer_set:
                attn = layer.self_attn
                self.hooks.append(attn.register_forward_pre_hook(partial(_attn_pre_hook, self, i), with_kwargs=True))
                self.hooks.append(attn.register_forward_hook(partial(_attn_hook, self, i)))

    @property
    def attn_implementation(self) -> str:
        return getattr(self.language_model.config, "_attn_implementation", None) or "eager"

    @property
    def eager(self) -> bool:
        """Eager attention returns its probabilities, which the routers read directly."""
        return self.attn_implementation == "eager"

    # -- side inputs -------------------------------------------------------------------------
    def _llava_pre_hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        encoded = kwargs.get("mm_encoder_outputs") or {}
        has_pixels = kwargs.get("pixel_values") is not None or encoded.get("image") is not None
        if not has_pixels:
            mask = None  # no image features are scattered in: every token is text
        elif input_ids is not None:
            mask = input_ids == self.image_token_id
        else:
            # Same rule as LlavaModel.get_placeholder_mask when only embeddings are given.
            token = module.get_input_embeddings()(torch.tensor(self.image_token_id, device=embeds.device))
            mask = (embeds == token).all(-1)
        kwargs[_IMAGE_KW] = mask
        return args, kwargs

    def _lm_pre_hook(self, module, args, kwargs):
        image = kwargs.pop(_IMAGE_KW, None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = module.get_input_embeddings()(input_ids)
        if image is None:
            image = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        mask2d = kwargs.get("attention_mask")
        if mask2d is not None and (not isinstance(mask2d, torch.Tensor) or mask2d.dim() != 2):
            raise MlanError(
                "Wings: expected a 2D attention mask (batch, tokens) from the tokenizer/processor; "
                "4D masks and static caches are not supported"
            )
        kwargs[_CHUNK_KW] = _Chunk(x=embeds, image=image.to(embeds.device), mask2d=mask2d)
        return args, kwargs

    # -- per-forward context -----------------------------------------------------------------
    def context(self, chunk: _Chunk, hidden: torch.Tensor, position_ids, cache, layer_idx: int) -> _Context:
        """Build (once per forward) the keys, masks and cache bookkeeping shared by all Wings layers."""
        if chunk.context is not None:
            return chunk.context
        b, n, _ = hidden.shape
        dev = hidden.device
        state, past = None, 0
        if cache is not None:
            # Read before this layer's main attention appends the new tokens.
            past = cache.get_seq_length(layer_idx)
            state = self.caches.get(cache)
            if state is None:
                if past:
                    raise MlanError("Wings: past_key_values were not produced by this Wings model")
                state = _CacheState()
                self.caches[cache] = state
            elif state.length != past:
                raise MlanError(
                    f"Wings: the cache holds {past} tokens but the learners remember {state.length} "
                    "(cache cropping and beam reordering are not supported)"
                )
        if chunk.mask2d is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=dev)
        else:
            if chunk.mask2d.shape[-1] != past + n:
                raise MlanError(
                    f"Wings: attention mask covers {chunk.mask2d.shape[-1]} tokens, expected {past + n} (past + new)"
                )
            valid = chunk.mask2d[:, -n:].to(dev).bool()
        if position_ids is None:
            position_ids = torch.arange(past, past + n, device=dev)[None]
        if position_ids.dim() != 2:
            raise MlanError("Wings: expected position_ids of shape (batch, tokens)")
        positions = position_ids.to(dev).expand(b, n)
        image = chunk.image & valid
        text = ~chunk.image & valid
        slots = torch.arange(past, past + n, device=dev)

        def extend(old, new):
            return new if old is None else torch.cat((old, new), dim=1)

        image_all = extend(state.image if state else None, image)
        valid_all = extend(state.valid if state else None, valid)
        positions_all = extend(state.positions if state else None, positions)
        main_mask = None
        if self.use_router and self.config.router == "modality" and not self.eager:
            # Only the SDPA form of the modality router needs the main branch's mask, rebuilt here
            # because each attention kernel receives it in its own format (or not at all).
            all_slots = torch.arange(image_all.shape[1], device=dev)
            main_mask = valid_all[:, None, None, :] & (all_slots[None, None, None, :] <= slots[None, None, :, None])
            main_mask = _additive(main_mask | ~main_mask.any(-1, keepdim=True), hidden.dtype)

        keys: dict[str, _Keys | None] = {}
        for name, sel in (("visual", image), ("textual", text)):
            counts = sel.sum(1)
            width = int(counts.max()) if b else 0
            # Selected tokens first, in their original order; the rest pad the row and are masked out.
            order = torch.argsort((~sel).to(torch.uint8), dim=1, stable=True)[:, :width]
            new_valid = torch.arange(width, device=dev)[None] < counts[:, None]
            new_slots = slots[order]
            old = state.keys_meta.get(name) if state else None
            key_valid = extend(old[0] if old else None, new_valid)
            key_slots = extend(old[1] if old else None, new_slots)
            if state is not None:
                state.keys_meta[name] = (key_valid, key_slots)
            if key_valid.shape[1] == 0:
                keys[name] = None
                continue
            # Visual keys are unmasked (one mask row per batch row, broadcast over queries);
            # textual keys are causal: a query sees text at or before its own slot.
            visible = key_valid[:, None, None, :]
            if name == "textual":
                visible = visible & (key_slots[:, None, None, :] <= slots[None, None, :, None])
            seen = visible.any(-1, keepdim=True)
            x = chunk.x.gather(1, order[..., None].expand(b, width, chunk.x.shape[-1]))
            cos, sin = self.language_model.rotary_emb(x, positions.gather(1, order))
            keys[name] = _Keys(
                x=x, cos=cos, sin=sin, mask=_additive(visible | ~seen, hidden.dtype), keep=seen.to(hidden.dtype)
            )

        has_image = image_all.any(1)
        if state is not None:
            state.image, state.valid, state.positions = image_all, valid_all, positions_all
            state.length = past + n
        cos, sin = self.language_model.rotary_emb(hidden, positions)
        chunk.context = _Context(
            past=past,
            positions=positions,
            cos=cos,
            sin=sin,
            query_slots=slots,
            has_image=has_image,
            any_image=bool(has_image.any()) and keys["visual"] is not None,
            image_all=image_all,
            positions_all=positions_all,
            main_mask=main_mask,
            keys=keys,
            state=state,
        )
        return chunk.context


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Converted once per forward: SDPA would otherwise turn a boolean mask into this at every call.
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


def _image_token_id(config) -> int:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise MlanError("Wings: the model config has no image_token_id")


def _layer_cache(kwargs: dict):
    """The KV cache a decoder layer was called with, or None.

    The one place that knows the keyword's name: transformers 5.24 renamed the decoder layers'
    `past_key_values` argument to `cache` (the old name is deprecated until 5.40), so both are
    read. `tests/test_wings.py::test_decoder_layers_receive_the_cache` checks this behaviour on
    the installed release.
    """
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


@dataclass
class _LayerInput:
    """What one Wings layer's attention hooks need: the forward's side inputs and the layer's input."""

    chunk: _Chunk
    residual: torch.Tensor  # the decoder layer's input: the attention output is added to it


@dataclass
class _Pending:
    """Between a Wings attention's pre-hook and its forward hook (the same call, nothing in between)."""

    inputs: _LayerInput
    captured: dict[str, torch.Tensor]
    hooks: list


def _layer_pre_hook(runtime: WingsRuntime, index: int, layer, args, kwargs):
    """Every decoder layer: take the side inputs out of the keyword arguments (no attention kernel sees
    them); a Wings layer builds the forward's shared context and hands its own input to its attention.

    Keyword arguments survive gradient checkpointing's replay (transformers checkpoints the layer's
    `forward` with the same arguments), so the replayed attention gets the same side inputs even when
    another forward ran in between.
    """
    chunk = kwargs.pop(_CHUNK_KW, None)
    if index not in runtime.layer_set:
        return args, kwargs
    if not isinstance(chunk, _Chunk):
        raise MlanError("Wings: a decoder layer was called without its side inputs (call the LLaVA model)")
    hidden = args[0] if args else kwargs["hidden_states"]
    runtime.context(chunk, hidden, kwargs.get("position_ids"), _layer_cache(kwargs), index)
    kwargs[_CHUNK_KW] = _LayerInput(chunk, hidden)
    return args, kwargs


def _attn_pre_hook(runtime: WingsRuntime, index: int, attn, args, kwargs):
    inputs = kwargs.pop(_CHUNK_KW)
    ctx = inputs.chunk.context
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    if runtime.use_router and ctx.any_image and runtime.config.router == "modality" and not runtime.eager:
        # The main branch's own projections (whatever module sits there now, e.g. a PEFT-wrapped
        # Linear), captured instead of recomputed.
        hooks = [
            attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
            attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)),
        ]
    runtime.pending[index] = _Pending(inputs, captured, hooks)
    return args, kwargs


def _attn_hook(runtime: WingsRuntime, index: int, attn, args, output):
    """attention output a -> a + w_v * LoRRA_v(h) + w_t * LoRRA_t(h), with h = layer input + a.

    The decoder layer adds this to its residual, so the next sublayer (post-attention norm + MLP)
    and the residual stream see h + delta: the learners are added once, after the attention residual.
    """
    pending = runtime.pending.pop(index)
    for h in pending.hooks:
        h.remove()
    out, probs = output[0], output[1] if len(output) > 1 else None
    ctx = pending.inputs.chunk.context
    layer = runtime.language_model.layers[index]
    hidden = pending.inputs.residual + out
    delta = _learners(layer, runtime, ctx, hidden, probs, pending.captured)
    if delta is None:
        return output
    return (out + delta, *output[1:])


def _learners(layer, runtime, ctx: _Context, h, probs, captured):
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


def _route(layer, runtime, ctx: _Context, probs, captured) -> torch.Tensor:
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


def _modality_features(attn, ctx: _Context, probs, captured) -> torch.Tensor:
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


def add_wings(model, config: WingsConfig | None = None, *, use_router: bool = True):
    """Add Wings learners (and routers) to a LLaVA-style model in place and return it.

    With fresh learners the model's outputs are unchanged (bit for bit). `use_router=False`
    adds the learners' outputs directly (stage 1); `wings_parameter_groups` switches it per stage.
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
    from mlan.wings.io import wings_save_pretrained

    # Every save (the Trainer's checkpoints too) keeps the base a standard LLaVA folder.
    model.save_pretrained = types.MethodType(wings_save_pretrained, model)
    n = sum(p.numel() for p in wings_parameters(model))
    log.info(
        "Wings: %d learner/router parameters on %d layers (rank %d, router %s)",
        n,
        len(layers),
        config.rank,
        config.router,
    )
    return model


def get_runtime(model) -> WingsRuntime | None:
    """The model's Wings runtime, or None for a model without Wings."""
    return model.__dict__.get("_wings_runtime")


def wings_layers(model) -> dict[int, WingsLayer]:
    """Layer index -> that layer's `WingsLayer`."""
    runtime = _require(model)
    layers = runtime.language_model.layers
    return {i: layers[i].wings for i in runtime.layer_ids}


def wings_parameters(model) -> list[nn.Parameter]:
    """All learner and router parameters."""
    return [p for w in wings_layers(model).values() for p in w.parameters()]


def set_routing(model, use_router: bool) -> None:
    """Route learner outputs by the router (stage 2, inference) or add them directly (stage 1)."""
    _require(model).use_router = use_router


def _require(model) -> WingsRuntime:
    runtime = get_runtime(model)
    if runtime is None:
        raise MlanError(f"Wings: {type(model).__name__} has no Wings learners (call add_wings first)")
    return runtime


def wings_parameter_groups(model, stage: int, config: WingsConfig | None = None) -> list[dict]:
    """Optimizer parameter groups for a Wings training stage; also sets trainability and routing.

    Stage 1: projector + visual learners train (learners added directly, no router); language
    model, textual learners, routers and vision tower are frozen. Stage 2: visual + textual
    learners, routers, the full language model (embeddings and head included) and the projector
    (at its own rate) train; the vision tower is frozen. Each group is
    `{"name", "params", "lr"}`, ready for `torch.optim.AdamW(groups)`.
    """
    runtime = _require(model)
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
