"""mlan's lm-eval model: lm-eval's HFLM, with each shared context computed once and generation batched continuously.

`SharedContextLM` is a subclass of lm-eval's `HFLM` handed to `lm_eval.simple_evaluate` as the model object,
as HFLM itself is: lm-eval keeps the task definitions, prompts, few-shot draws, filters and metrics, and
this class only answers its requests faster, with HFLM's results.

- `loglikelihood`: lm-eval tokenizes each (context, continuation) pair with its own code (TemplateLM.loglikelihood
  and `_encode_pair`, lm_eval/api/model.py:393-471: trailing spaces moved to the continuation, the pair encoded
  whole and split at the context's length, an empty context replaced by the prefix token); what reaches
  `_loglikelihood_tokens` is `(strings, context_ids, continuation_ids)`, and HFLM scores `context_ids +
  continuation_ids` (huggingface.py:1426-1440). A multiple-choice question sends the same `context_ids` with
  every choice, so here the context runs once (one forward over a batch of contexts, left-padded so every
  context ends in the last column and only that column's logits are computed), and each choice continues from
  its keys and values (the cache's rows picked per choice, several questions' choices in one forward). HFLM
  shares a context only when every choice is one token (its `logits_cache`, huggingface.py:1350-1365); RACE's
  article, HellaSwag's and ARC's questions ran once per choice. The sum of log-probabilities and
  `is_greedy` are HFLM's (huggingface.py:1524-1557), equal to within float rounding.
  Scored by HFLM itself, unchanged: a pair longer than the model's window (HFLM cuts each such row from the
  left by its own amount, so rows share nothing), `loglikelihood_rolling`, a Wings model (its learners keep
  their own cache state per cache object, which picking rows would not carry), a seq2seq model, and
  `batch_size: auto`.
- `generate_until`: greedy requests go through `mlan.generation.generate` (continuous batching: a finished
  sequence leaves the batch and the next takes its place, where HFLM's static batch runs until its longest
  row stops); HFLM's context encoding and left truncation, stop strings (`until` plus the EOS string),
  `max_gen_toks`, EOS ids (the model's generation config, as HF `generate` reads them) and post-processing
  (decode, then cut at the first stop string) are reproduced, file:line at each step. Sampling, other
  generation arguments and thinking models go to HFLM.

Several processes: lm-eval deals each task's documents out by rank before any request reaches the model;
HFLM's `rank`, `world_size`, gather and barrier are inherited unchanged (mlan.evaluate.parallel sets them),
and nothing here is collective, so a process scores its own share exactly as HFLM would.

`stats` records per call the tokens computed and the tokens HFLM computes for the same requests
(`mlan eval` writes them to results.json as each task's `tokens`).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

log = logging.getLogger(__name__)

BACKENDS = ("mlan", "lm_eval")
"""`mlan eval --backend`: mlan's SharedContextLM (the default), or lm-eval's own HFLM for comparison."""

# Generation settings HF `generate` would apply from the model's generation config on top of greedy decoding
# (transformers' logits processors); mlan.generation applies none of them, so such a model generates with HFLM.
_PROCESSOR_SETTINGS = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
}


@dataclass
class CallStats:
    """One request call's work: questions (lm-eval documents), requests, and tokens through the model."""

    kind: str  # loglikelihood | generate_until
    questions: int
    requests: int
    tokens: int  # tokens this backend ran through the model (context once, each continuation's own tokens)
    tokens_lm_eval: int  # tokens HFLM runs through the model for the same requests (padding not counted)


class SharedContextLM(HFLM):
    """HFLM with each context computed once per question and continuous batching for generation (module doc)."""

    backend_name = "mlan"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stats: list[CallStats] = []
        self._rolling = False
        forward = inspect.signature(self.model.forward).parameters
        # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name is deprecated).
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._keeps_logits = "logits_to_keep" in forward

    # ------------------------------------------------------------------------------ which path

    def _shares(self) -> bool:
        """Whether this model's contexts can be computed once (see the module doc for what HFLM keeps)."""
        from mlan.wings import get_runtime

        return self.backend == "causal" and isinstance(self.batch_size, int) and get_runtime(self.model) is None

    # ------------------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        calls = len(self.stats)
        out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        if len(self.stats) > calls:  # the shared path ran: it counts documents from the Instances here
            self.stats[-1].questions = len({(r.task_name, r.doc_id) for r in requests})
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        # HFLM's rolling windows call `_loglikelihood_tokens` too (huggingface.py:1282-1286); they have no shared
        # context and stay HFLM's.
        self._rolling = True
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._rolling = False

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if self._rolling or not self._shares():
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # HFLM cuts (context + continuation) to its last max_length + 1 tokens (huggingface.py:1426-1440): a row
        # that long loses a different left part per continuation, so HFLM scores those rows itself.
        long = [i for i, (_, c, k) in enumerate(requests) if len(c) + len(k) > self.max_length + 1]
        if long:
            scored = super()._loglikelihood_tokens([requests[i] for i in long], disable_tqdm=True)
            for i, r in zip(long, scored, strict=True):
                results[i] = r
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            if results[i] is None:
                # HFLM's own checks (huggingface.py:1415-1417).
                assert len(context) > 0 and len(continuation) > 0
                groups.setdefault(tuple(context), []).append(i)
        # Longest contexts first, as HFLM orders its rows (huggingface.py:1338-1348): padding stays small and
        # running out of memory happens at once.
        order = sorted(groups, key=lambda c: (-len(c), c))
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        pbar.update(len(long))
        for start in range(0, len(order), self.batch_size):
            contexts = order[start : start + self.batch_size]
            rows = [[(i, requests[i][2]) for i in groups[c]] for c in contexts]
            for i, answer in self._score_contexts(contexts, rows):
                results[i] = answer
                if requests[i][0] is not None:  # as HFLM reports each answer (huggingface.py:1561-1567)
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            pbar.update(sum(len(r) for r in rows))
        pbar.close()
        self.stats.append(
            CallStats(
                "loglikelihood",
                questions=len(groups),  # documents, when `loglikelihood` knows them
                requests=len(requests),
                tokens=sum(len(c) for c in groups)
                + sum(len(requests[i][2]) - 1 for ids in groups.values() for i in ids)
                + _hflm_tokens([requests[i] for i in long], self.max_length, self.logits_cache),
                tokens_lm_eval=_hflm_tokens(requests, self.max_length, self.logits_cache),
            )
        )
        return results

    def _forward(self, ids, mask, positions, cache=None, last_only: bool = False):
        """One forward of the model with HFLM's no-grad and mixed-precision settings (huggingface.py:1131-1151)."""
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        if cache is not None:
            kwargs[self._cache_arg] = cache
        if last_only and self._keeps_logits:
            kwargs["logits_to_keep"] = 1  # only the last column's logits: the context's own ones are not scored
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            out = self.model(**kwargs)
        new_cache = out.get("cache") if "cache" in out else out.get("past_key_values")
        logits = out.logits[:, -1:] if last_only else out.logits
        return logits, new_cache

    def _score_contexts(self, contexts: list[tuple[int, ...]], rows: list[list[tuple[int, list[int]]]]):
        """(request index, (log-probability, is_greedy)) of every continuation of these contexts."""
        dev = self.device
        lengths = torch.tensor([len(c) for c in contexts], device=dev)
        width = int(lengths.max())
        ids = torch.zeros(len(contexts), width, dtype=torch.long, device=dev)
        mask = torch.zeros(len(contexts), width, dtype=torch.long, device=dev)
        for b, c in enumerate(contexts):  # left padding: every context ends in the last column
            ids[b, width - len(c) :] = torch.tensor(c, dtype=torch.long, device=dev)
            mask[b, width - len(c) :] = 1
        # Each token at its position in its own sequence (0 at its first token), as in HFLM's right-padded rows.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, mask, positions, last_only=True)
        # The log-probabilities of every continuation's first token (HFLM: huggingface.py:1503-1507).
        first = F.log_softmax(logits[:, -1], dim=-1, dtype=self.softmax_dtype)
        if cache is None or not hasattr(cache, "layers"):
            raise RuntimeError(f"{type(self.model).__name__}: no transformers Cache returned; cannot share contexts")
        flat = [(b, i, cont) for b, rs in enumerate(rows) for i, cont in rs]
        for b, i, cont in flat:
            if len(cont) == 1:  # one token: the context's own last column scores it
                yield i, _answer(first[b : b + 1], cont)
        longer = sorted((r for r in flat if len(r[2]) > 1), key=lambda r: -len(r[2]))
        # At most batch_size continuations per forward: each carries a copy of its context's keys and values,
        # so a forward holds no more than the contexts' own batch did.
        for start in range(0, len(longer), self.batch_size):
            part = longer[start : start + self.batch_size]
            yield from self._continue(part, first, cache, mask, lengths)

    def _continue(self, part, first, cache, context_mask, lengths):
        """Score continuations of two tokens or more from their contexts' cached keys and values."""
        dev = self.device
        src = torch.tensor([b for b, _, _ in part], device=dev)
        n = max(len(cont) - 1 for _, _, cont in part)  # the last token is only scored, never fed
        ids = torch.zeros(len(part), n, dtype=torch.long, device=dev)
        mask = torch.zeros(len(part), n, dtype=torch.long, device=dev)
        for r, (_, _, cont) in enumerate(part):
            ids[r, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long, device=dev)
            mask[r, : len(cont) - 1] = 1
        positions = lengths[src, None] + torch.arange(n, device=dev)[None]
        attention = torch.cat([context_mask[src], mask], dim=1)
        logits, _ = self._forward(ids, attention, positions, cache=_cache_rows(cache, src))
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        for r, (b, i, cont) in enumerate(part):
            scored = torch.cat([first[b : b + 1], logprobs[r, : len(cont) - 1]], dim=0)
            yield i, _answer(scored, cont)

    # ------------------------------------------------------------------------------ generate_until

    def _generates(self) -> bool:
        """Whether greedy requests can go through mlan.generation (HFLM otherwise; see the module doc)."""
        if not self._shares() or self.think_end_token is not None:
            return False
        config = getattr(self.model, "generation_config", None)
        # transformers 5 leaves an unset field None; an older config may spell out the neutral value.
        return config is None or all(
            getattr(config, k, None) in (None, d, [], ()) for k, d in _PROCESSOR_SETTINGS.items()
        )

    def generate_until(self, requests, disable_tqdm: bool = False):
        if not self._generates():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        from mlan.generation import Request, generate

        # HFLM adds the EOS string to every request's stop strings (huggingface.py:1627, 1636-1638).
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str | None] = [None] * len(requests)
        todo: list[int] = []
        prepared: list[Request] = []
        stops: list[list[str]] = []
        hflm: list[int] = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)  # huggingface.py:1636
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = kwargs.pop("max_gen_toks")
            greedy = kwargs.pop("do_sample", False) is False and kwargs.pop("temperature", 0.0) == 0.0
            if not greedy or kwargs:  # sampling, or generation arguments mlan.generation does not take
                hflm.append(i)
                continue
            # HFLM's room for the context: the model's length less the new tokens (huggingface.py:1640-1650).
            max_ctx_len = self.max_length - max_gen_toks
            assert max_ctx_len > 0, f"max_gen_toks ({max_gen_toks}) must be less than max_length ({self.max_length})"
            ids = self._context_ids(context, max_ctx_len)
            todo.append(i)
            prepared.append(Request(ids=tuple(ids), max_new_tokens=max_gen_toks, stop=tuple(s for s in until if s)))
            stops.append(until)
        if hflm:
            for i, text in zip(
                hflm, super().generate_until([requests[i] for i in hflm], disable_tqdm=True), strict=True
            ):
                results[i] = text
        pbar = tqdm(total=len(todo), disable=disable_tqdm or self.rank != 0, desc="Running generate_until requests")
        new_tokens = [0] * len(todo)
        # EOS ids left to mlan.generation: the model's generation config's (else the tokenizer's), the ones HF
        # `generate` stops a row on in HFLM, which passes none of its own (huggingface.py:1182-1189).
        for k, output in generate(self.model, self.tokenizer, prepared, batch_size=self.batch_size):
            i = todo[k]
            new_tokens[k] = len(output.ids)
            # HFLM decodes the new tokens without special tokens and cuts at the first stop string
            # (huggingface.py:1677-1707, postprocess_generated_text in lm_eval/models/utils.py:943-970).
            text = postprocess_generated_text(self.tok_decode(output.ids), stop=stops[k], think_end_token=None)
            results[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
            pbar.update(1)
        pbar.close()
        prompts = [len(r.ids) for r in prepared]
        self.stats.append(
            CallStats(
                "generate_until",
                questions=len({(r.task_name, r.doc_id) for r in requests}),
                requests=len(requests),
                tokens=sum(prompts) + sum(new_tokens),
                tokens_lm_eval=_hflm_generate_tokens(
                    [requests[i].args[0] for i in todo], prompts, new_tokens, self.batch_size
                ),
            )
        )
        return results

    def _context_ids(self, context: str, max_ctx_len: int) -> list[int]:
        """A context's token ids as HFLM's `tok_batch_encode` makes them (huggingface.py:1065-1106).

        HFLM decides whether to add special tokens from the first string of each batch (a context that
        already starts with the BOS string gets none); here each context decides for itself, which differs
        only in a batch that mixes contexts with and without a written BOS."""
        special = {}
        if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
            special = {"add_special_tokens": False}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        ids = self.tokenizer(context, truncation=self.truncation, **special)["input_ids"]
        # Left truncation of a left-padded batch keeps each row's last tokens (huggingface.py:1092-1104).
        return ids[-max_ctx_len:]


def make_backend(name: str, model, tokenizer, batch_size: int | str):
    """The lm-eval model object of `mlan eval --backend NAME` around an already-loaded causal LM."""
    cls = SharedContextLM if name == "mlan" else HFLM
    lm = cls(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)
    lm.backend_name = name
    return lm


def _answer(logprobs: torch.Tensor, cont: Sequence[int]) -> tuple[float, bool]:
    """(sum of the continuation's log-probabilities, whether each was the argmax), as HFLM computes them
    from the same log-softmax rows (huggingface.py:1524-1557)."""
    target = torch.tensor(cont, dtype=torch.long, device=logprobs.device)
    greedy = bool((logprobs.argmax(dim=-1) == target).all())
    return float(logprobs.gather(1, target[:, None]).sum()), greedy


def _cache_rows(cache, rows: torch.Tensor):
    """A cache holding the given batch rows of `cache` (a row may repeat), leaving `cache` itself as it was.

    Through the cache's public `batch_select_indices`, on shallow copies of the cache and its layers: the
    copies get new tensors, the originals keep theirs, and per-layer settings (a sliding window) come along."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows)
    return out


def _hflm_tokens(requests, max_length: int, logits_cache: bool) -> int:
    """Tokens HFLM runs through the model for these loglikelihood requests: each row is (context +
    continuation) less its last token, cut to max_length; rows whose context + continuation[:-1] are equal
    run once when its logits cache is on (huggingface.py:1350-1365)."""
    if not logits_cache:
        return sum(min(len(c) + len(k) - 1, max_length) for _, c, k in requests)
    keys = {tuple(c) + tuple(k[:-1]) for _, c, k in requests}
    return sum(min(len(key), max_length) for key in keys)


def _hflm_generate_tokens(contexts: list[str], prompts: list[int], new: list[int], batch_size: int) -> int:
    """Tokens HFLM's static batches run through the model for these generations, padding included: it sorts
    the contexts longest first (huggingface.py:1579-1590), pads each batch to its longest prompt, and runs the
    batch until its last row stops (taken as the row's own output length here; a row's tokens after its stop
    are computed and then cut)."""
    order = sorted(range(len(contexts)), key=lambda k: (-prompts[k], contexts[k]))
    total = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        total += len(batch) * (max(prompts[k] for k in batch) + max(new[k] for k in batch))
    return total
