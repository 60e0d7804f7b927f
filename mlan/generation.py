"""Continuous batching for a Hugging Face causal LM, with shared prompt prefixes computed once.

A padded `generate` batch runs until its longest row ends, and every row of it pays for its whole prompt.
Here a row leaves the batch the step it ends (EOS, a stop text, its token budget) and the next request takes
its place; and a prompt prefix that several requests share (MLAN's teacher prompts: the instruction and one
of a few exemplars; an evaluation's few-shot examples) is run once, its keys and values kept and continued
for each request. On a CPU the prompt is most of a small model's work, so the prefix is where the time goes.

Why by hand: transformers' own continuous batching (`model.generate_batch`, paged attention) is built for
CUDA. On a CPU it ran 2.3x slower than one request at a time (SmolLM2-135M, one thread, 8 prompts of 216
tokens, 32 new tokens each: 54.2 s against 23.4 s, transformers 5.24), it shares no prefix, and its sampling
draws from one global random state, so a row's sample depends on the rows beside it. Here each request
samples from its own generator, seeded by the request: a row draws the same tokens whatever else runs.

Greedy rows give the same tokens at any batch size up to floating-point ties: rows are left-padded in one
key/value cache and a row's pad keys are masked out, as in a padded `generate` batch.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import (
    Cache,
    DynamicCache,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True)
class Request:
    """One prompt to continue.

    `prefix`: how many leading tokens other requests share; their keys and values are computed once (one
    forward of exactly those tokens, so a row's numbers never depend on which other rows came first) and
    continued for each request. 0 shares nothing; at most len(ids) - 1 is used, since the last prompt token's
    logits start the continuation."""

    ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()
    prefix: int = 0


@dataclass
class Output:
    """New token ids (the EOS included when the row ended on one), and whether the row ended on EOS or a stop
    text rather than its budget."""

    ids: list[int]
    finished: bool


@dataclass
class _Row:
    index: int
    request: Request
    length: int  # tokens in the cache for this row (prompt + generated so far), its next position
    new: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    warpers: list = field(default_factory=list)


# Prefix key/value sets kept at once: a run's rows share a few exemplars or one few-shot block, and requests
# are admitted grouped by prefix, so a handful is enough; each holds layers x prefix tokens of keys and values.
_PREFIXES = 8


def generate(
    model,
    tokenizer,
    requests: Sequence[Request],
    *,
    batch_size: int = 8,
    eos_ids: Collection[int] | None = None,
) -> Iterator[tuple[int, Output]]:
    """(index into `requests`, its output) for every request, as each ends. Requests are admitted grouped by
    shared prefix, otherwise in the order given; at most `batch_size` run at once."""
    eos = default_eos_ids(model, tokenizer) if eos_ids is None else set(eos_ids)
    yield from _Batcher(model, tokenizer, eos, batch_size).run(requests)


def default_eos_ids(model, tokenizer) -> set[int]:
    """The token ids a row ends on, as `generate` reads them: the model's generation config's, else the
    tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos if isinstance(eos, list) else [eos]) - {None}


class _Batcher:
    def __init__(self, model, tokenizer, eos_ids: set[int], batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.batch_size = max(1, batch_size)
        self.device = model.device
        self.prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    @torch.inference_mode()
    def run(self, requests: Sequence[Request]) -> Iterator[tuple[int, Output]]:
        # Grouped by prefix (first seen first), so a prefix's rows run while its keys and values are kept.
        prefixes = [r.ids[: self._shared(r)] for r in requests]
        first: dict[tuple[int, ...], int] = {}
        for i, key in enumerate(prefixes):
            first.setdefault(key, i)
        waiting = deque(sorted(range(len(requests)), key=lambda i: first[prefixes[i]]))
        rows: list[_Row] = []
        cache = None  # the running rows' keys and values, left-padded (a Cache of _RoomyLayer)
        mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        logits = torch.zeros(0, 0, device=self.device)
        while waiting or rows:
            joining = []
            while waiting and len(rows) < self.batch_size:
                i = waiting.popleft()
                row, kv, last = self._prefill(i, requests[i])
                joining.append(kv)
                rows.append(row)
                logits = torch.cat([logits, last]) if logits.numel() else last
            if joining:  # one new cache for all rows that join at this step, not one per row
                cache, mask = self._join(cache, mask, joining)
            tokens = [self._pick(row, logits[b]) for b, row in enumerate(rows)]
            keep = []
            for b, (row, tok) in enumerate(zip(rows, tokens, strict=True)):
                row.new.append(tok)
                ended = self._ended(row)
                if ended is None:
                    keep.append(b)
                else:
                    yield row.index, Output(row.new, ended)
            if len(keep) < len(rows):
                rows = [rows[b] for b in keep]
                tokens = [tokens[b] for b in keep]
                if not rows:
                    cache, mask, logits = None, mask[:0, :0], logits[:0]
                    continue
                cache, mask = self._select(cache, mask, keep)
            # One step for every running row: its new token at its own position, its pads masked out.
            ids = torch.tensor(tokens, device=self.device)[:, None]
            positions = torch.tensor([row.length for row in rows], device=self.device)[:, None]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            cache = out.cache
            logits = out.logits[:, -1].float()
            for row in rows:
                row.length += 1

    def _shared(self, r: Request) -> int:
        return max(0, min(r.prefix, len(r.ids) - 1))

    def _prefill(self, index: int, r: Request):
        """The request's row, its keys and values (per layer, batch of one), and the logits of its first
        new token: the shared prefix from the prefix store, the rest run here."""
        p = self._shared(r)
        past = DynamicCache(ddp_cache_data=self._prefix(r.ids[:p])) if p else None
        ids = torch.tensor(r.ids[p:], device=self.device)[None]
        positions = torch.arange(p, len(r.ids), device=self.device)[None]
        out = self.model(input_ids=ids, position_ids=positions, cache=past, use_cache=True, logits_to_keep=1)
        row = _Row(index, r, len(r.ids))
        if r.temperature > 0:
            row.generator = torch.Generator(device=self.device).manual_seed(r.seed)
            # transformers' `generate` order: temperature, then top-k, then top-p.
            row.warpers = [TemperatureLogitsWarper(r.temperature)]
            if r.top_k:
                row.warpers.append(TopKLogitsWarper(r.top_k))
            if r.top_p < 1:
                row.warpers.append(TopPLogitsWarper(r.top_p))
        return row, _layers(out.cache), out.logits[:, -1].float()

    def _prefix(self, ids: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The keys and values of `ids` run alone, from the store or computed (and stored, oldest dropped)."""
        if ids in self.prefixes:
            self.prefixes.move_to_end(ids)
            return self.prefixes[ids]
        out = self.model(input_ids=torch.tensor(ids, device=self.device)[None], use_cache=True, logits_to_keep=1)
        kv = _layers(out.cache)
        self.prefixes[ids] = kv
        if len(self.prefixes) > _PREFIXES:
            self.prefixes.popitem(last=False)
        return kv

    def _join(self, cache, mask: torch.Tensor, joining: list[list[tuple[torch.Tensor, torch.Tensor]]]):
        """The running cache with the joining rows (each its per-layer keys and values, batch of one) below it,
        every row padded on the left (masked) to the longest."""
        parts = ([] if cache is None else [_layers(cache)]) + joining
        masks = ([] if cache is None else [mask]) + [mask.new_ones(1, kv[0][0].shape[-2]) for kv in joining]
        t = max(m.shape[1] for m in masks)
        kv = [
            (
                torch.cat([_pad_left(p[layer][0], t) for p in parts]),
                torch.cat([_pad_left(p[layer][1], t) for p in parts]),
            )
            for layer in range(len(parts[0]))
        ]
        return _roomy(kv), torch.cat([_pad_left(m, t, dim=1) for m in masks])

    def _select(self, cache, mask: torch.Tensor, keep: list[int]):
        """The cache of the rows kept, without the columns that are padding in every one of them."""
        idx = torch.tensor(keep, device=self.device)
        mask = mask[idx]
        start = int((mask.cumsum(1) == 0).sum(1).min())  # left pad shared by every kept row
        kv = [(k[idx, :, start:], v[idx, :, start:]) for k, v in _layers(cache)]
        return _roomy(kv), mask[:, start:]

    def _pick(self, row: _Row, logits: torch.Tensor) -> int:
        if row.generator is None:
            return int(logits.argmax())
        scores = logits[None]
        for warp in row.warpers:
            scores = warp(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs[0], 1, generator=row.generator))

    def _ended(self, row: _Row) -> bool | None:
        """None while the row goes on; True when it ended on EOS or a stop text, False on its budget."""
        if row.new[-1] in self.eos_ids:
            return True
        stop = row.request.stop
        if stop:
            # A stop text of n characters spans at most n tokens; it is looked for when its last token comes.
            window = max(map(len, stop)) + 8
            tail = self.tokenizer.decode(row.new[-window:], skip_special_tokens=True)
            if any(s in tail for s in stop):
                return True
        if len(row.new) >= row.request.max_new_tokens:
            return False
        return None


def _roomy(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Cache:
    """A transformers Cache of the running rows whose layers have room to grow (`_RoomyLayer`)."""
    return Cache(layers=[_RoomyLayer(k, v) for k, v in kv])


class _RoomyLayer(DynamicLayer):
    """transformers' DynamicLayer, its keys and values views of buffers with room for more steps: a step writes
    its column in place, where DynamicLayer copies the whole cache into a new tensor (torch.cat), which was half
    of a decode step's time on a CPU (SmolLM2-135M, 16 rows of 1,000 tokens: 166 of 323 ms)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.length = 0
        self._buffers = self._allot(keys, values)

    def _allot(self, keys: torch.Tensor, values: torch.Tensor) -> list[torch.Tensor]:
        """New buffers holding `keys` and `values` with room to spare; the layer's views set on them."""
        n = keys.shape[-2]
        room = n + max(_ROOM, n // 4)
        bufs = []
        for x in (keys, values):
            buf = x.new_empty(*x.shape[:-2], room, x.shape[-1])
            buf[..., :n, :] = x
            bufs.append(buf)
        self.length = n
        self.keys, self.values = (buf[..., :n, :] for buf in bufs)
        return bufs

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if self.length + n > self._buffers[0].shape[-2]:
            self._buffers = self._allot(
                torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)
            )
            return self.keys, self.values
        end = self.length + n
        self._buffers[0][..., self.length : end, :] = key_states
        self._buffers[1][..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = (buf[..., :end, :] for buf in self._buffers)
        return self.keys, self.values


# Steps a running cache grows by before its buffer is copied into a larger one (or a quarter of its length).
_ROOM = 64


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(x: torch.Tensor, t: int, dim: int = -2) -> torch.Tensor:
    missing = t - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
