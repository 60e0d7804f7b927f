"""Wings on a LLaVA-style model: learners and router per decoder layer, side inputs, KV cache.

How it attaches (public PyTorch module hooks only: no copy of transformers model code, no
replaced `forward`, no private attention helpers or cache internals):

- Each chosen decoder layer gets a `wings` submodule (`WingsLayer`, `mlan.wings.layer`: visual +
  textual LoRRA and a router). A forward hook on the layer's attention turns its output `a` into
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
  non-padding tokens, causally masked, without the system prompt when it is known
  (`set_system_prompt`, see `mlan.wings.system`), as Wings' code leaves it out.
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

import weakref
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from mlan.config.wings import WingsConfig
from mlan.errors import MlanError
from mlan.wings.layer import CacheState, ForwardContext, LearnerKeys, WingsLayer
from mlan.wings.mixing import learners_delta
from mlan.wings.system import system_prefix_mask

_CHUNK_KW = "wings_chunk"
_IMAGE_KW = "wings_image_mask"
_IDS_KW = "wings_input_ids"


@dataclass
class _Chunk:
    """Side inputs of one language-model forward, passed to the decoder layers as a keyword argument."""

    x: torch.Tensor  # (B, L, d) input embeddings (image features at image positions)
    image: torch.Tensor  # (B, L) bool
    mask2d: torch.Tensor | None
    ids: torch.Tensor | None = None  # (B, L) token ids, when the forward got them: to find the system prompt
    context: ForwardContext | None = None


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
        # Token ids of the system prompt the textual learner leaves out (None: unknown, nothing left out).
        self.system_ids: tuple[int, ...] | None = None
        self.bos_id: int | None = None
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
        kwargs[_IDS_KW] = input_ids
        return args, kwargs

    def _lm_pre_hook(self, module, args, kwargs):
        image = kwargs.pop(_IMAGE_KW, None)
        ids = kwargs.pop(_IDS_KW, None)
        if ids is None:  # the language model called on its own
            ids = kwargs.get("input_ids", args[0] if args else None)
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
        kwargs[_CHUNK_KW] = _Chunk(x=embeds, image=image.to(embeds.device), mask2d=mask2d, ids=ids)
        return args, kwargs

    # -- per-forward context -----------------------------------------------------------------
    def context(self, chunk: _Chunk, hidden: torch.Tensor, position_ids, cache, layer_idx: int) -> ForwardContext:
        """Build (once per forward) the keys, masks and cache bookkeeping shared by all Wings layers."""
        if chunk.context is not None:
            return chunk.context
        b, n, _ = hidden.shape
        dev = hidden.device
        state, past = self._cache_state(cache, layer_idx)
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
        if past == 0 and self.system_ids is not None and chunk.ids is not None:
            # Only a first chunk can start with the system prompt (later ones continue a cached row).
            text &= ~system_prefix_mask(chunk.ids.to(dev), valid, self.system_ids, self.bos_id)
        slots = torch.arange(past, past + n, device=dev)

        image_all = _extend(state.image if state else None, image)
        valid_all = _extend(state.valid if state else None, valid)
        positions_all = _extend(state.positions if state else None, positions)
        main_mask = None
        if self.use_router and self.config.router == "modality" and not self.eager:
            # Only the SDPA form of the modality router needs the main branch's mask, rebuilt here
            # because each attention kernel receives it in its own format (or not at all).
            all_slots = torch.arange(image_all.shape[1], device=dev)
            main_mask = valid_all[:, None, None, :] & (all_slots[None, None, None, :] <= slots[None, None, :, None])
            main_mask = _additive(main_mask | ~main_mask.any(-1, keepdim=True), hidden.dtype)

        keys = {
            name: self._learner_keys(name, sel, chunk.x, slots, positions, state, hidden.dtype)
            for name, sel in (("visual", image), ("textual", text))
        }
        has_image = image_all.any(1)
        if state is not None:
            state.image, state.valid, state.positions = image_all, valid_all, positions_all
            state.length = past + n
        cos, sin = self.language_model.rotary_emb(hidden, positions)
        chunk.context = ForwardContext(
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

    def _cache_state(self, cache, layer_idx: int) -> tuple[CacheState | None, int]:
        """The learners' memory for this cache and the number of tokens already in it."""
        if cache is None:
            return None, 0
        # Read before this layer's main attention appends the new tokens.
        past = cache.get_seq_length(layer_idx)
        state = self.caches.get(cache)
        if state is None:
            if past:
                raise MlanError("Wings: the KV cache was not produced by this Wings model")
            state = CacheState()
            self.caches[cache] = state
        elif state.length != past:
            raise MlanError(
                f"Wings: the cache holds {past} tokens but the learners remember {state.length} "
                "(cache cropping and beam reordering are not supported)"
            )
        return state, past

    def _learner_keys(self, name, sel, x_all, slots, positions, state, dtype) -> LearnerKeys | None:
        """One learner's keys for this forward: the selected tokens (image or text), past ones included."""
        b, dev = sel.shape[0], sel.device
        counts = sel.sum(1)
        width = int(counts.max()) if b else 0
        # Selected tokens first, in their original order; the rest pad the row and are masked out.
        order = torch.argsort((~sel).to(torch.uint8), dim=1, stable=True)[:, :width]
        new_valid = torch.arange(width, device=dev)[None] < counts[:, None]
        old = state.keys_meta.get(name) if state else None
        key_valid = _extend(old[0] if old else None, new_valid)
        key_slots = _extend(old[1] if old else None, slots[order])
        if state is not None:
            state.keys_meta[name] = (key_valid, key_slots)
        if key_valid.shape[1] == 0:
            return None
        # Visual keys are unmasked (one mask row per batch row, broadcast over queries);
        # textual keys are causal: a query sees text at or before its own slot.
        visible = key_valid[:, None, None, :]
        if name == "textual":
            visible = visible & (key_slots[:, None, None, :] <= slots[None, None, :, None])
        seen = visible.any(-1, keepdim=True)
        x = x_all.gather(1, order[..., None].expand(b, width, x_all.shape[-1]))
        cos, sin = self.language_model.rotary_emb(x, positions.gather(1, order))
        return LearnerKeys(x=x, cos=cos, sin=sin, mask=_additive(visible | ~seen, dtype), keep=seen.to(dtype))


def _extend(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None else torch.cat((old, new), dim=1)


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
    delta = learners_delta(layer, runtime, ctx, hidden, probs, pending.captured)
    if delta is None:
        return output
    return (out + delta, *output[1:])


def get_runtime(model) -> WingsRuntime | None:
    """The model's Wings runtime, or None for a model without Wings."""
    return model.__dict__.get("_wings_runtime")


def wings_layers(model) -> dict[int, WingsLayer]:
    """Layer index -> that layer's `WingsLayer`."""
    runtime = require_runtime(model)
    layers = runtime.language_model.layers
    return {i: layers[i].wings for i in runtime.layer_ids}


def wings_parameters(model) -> list[nn.Parameter]:
    """All learner and router parameters."""
    return [p for w in wings_layers(model).values() for p in w.parameters()]


def set_routing(model, use_router: bool) -> None:
    """Route learner outputs by the router (stage 2, inference) or add them directly (stage 1)."""
    require_runtime(model).use_router = use_router


def set_system_prompt(model, ids: list[int] | tuple[int, ...] | None, bos_id: int | None = None) -> None:
    """Leave a row's system prompt (`ids`, the tokens after any BOS; see `mlan.wings.system`) and its BOS out
    of the textual learner's keys, in rows that start with it; None leaves nothing out."""
    runtime = require_runtime(model)
    runtime.system_ids = None if ids is None else tuple(int(i) for i in ids)
    runtime.bos_id = bos_id


def require_runtime(model) -> WingsRuntime:
    runtime = get_runtime(model)
    if runtime is None:
        raise MlanError(f"Wings: {type(model).__name__} has no Wings learners (call add_wings first)")
    return runtime
