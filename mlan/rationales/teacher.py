"""Teachers: a model that continues raw prompts, sampled or greedy, and says how many tokens it wrote and
whether it stopped on its own. A teacher streams: it is handed every row's request at once and yields each
answer as it comes, in any order, so the store grows while the rest is still being written.

- transformers (any device): the model loaded as every mlan stage loads it (mlan.models). Text rows go through
  mlan.generation's continuous batching (a row leaves the batch when it ends and the next takes its place;
  a prompt prefix shared by several rows, MLAN's instruction and exemplar, is computed once). Image rows
  through batched `generate` with left padding, as MLAN's teacher ran (batch of 4, `padding=True`,
  IT_MLLM@af440a6 src/model_util.py:253-264), the random state seeded per batch;
- vllm (CUDA GPUs, `pip install mlan[vllm]`): the same prompts and settings through vLLM's offline `LLM`,
  tensor-parallel for a 34B teacher; each prompt gets its own seed;
- openai: any OpenAI-compatible server (mlan.rationales.server).

Sampled rows use top_k 50 in every engine: MLAN's `generate` call set temperature and top_p only, so
transformers' default top_k (GenerationConfig.top_k = 50) applied; vLLM's and servers' default is no top_k.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlan import kinds
from mlan.errors import MlanError, first_line

log = logging.getLogger(__name__)

# Architectures that end in these names generate text; anything else (an encoder, a classifier) cannot teach.
_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


# transformers' GenerationConfig default, which MLAN's sampled teacher ran with (see above).
TOP_K = 50


@dataclass
class Generation:
    """One continuation: its text (special tokens left out), new tokens, and whether it ended on its own (EOS
    or a stop text). A server also says which model answered, how many prompt tokens it counted, how
    many times the request was retried, and which endpoint took it (completions, or chat: templated)."""

    text: str
    new_tokens: int
    finished: bool
    model: str | None = None
    prompt_tokens: int | None = None
    retries: int = 0
    endpoint: str | None = None


@dataclass(frozen=True)
class Sampling:
    """How a teacher continues: sampled (temperature > 0) or greedy, and how far."""

    temperature: float
    top_p: float
    max_new_tokens: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Ask:
    """One row's request: its prompt (and picture), sampling, seed, the texts after which its rationale has
    ended (an engine that can stop there saves the tokens; mlan.rationales.clean cuts there anyway), and the
    start of the prompt other rows share."""

    prompt: str
    image: Path | None
    sampling: Sampling
    seed: int
    stop: tuple[str, ...] = ()
    shared: str = ""  # the prompt's start that other rows share (an engine may compute it once)


class Teacher(Protocol):
    name: str
    engine: str
    vision: bool
    eos_token: str

    def prompt_tokens(self, prompts: list[str]) -> list[int]: ...

    def stream(self, asks: list[Ask], batch_size: int) -> Iterator[tuple[int, Generation]]:
        """(index into `asks`, its generation) for every ask, as each is done, in any order."""
        ...


class BatchTeacher:
    """A teacher that answers a batch at a time (`generate`): `stream` cuts the asks into batches of
    `batch_size` in the order given, each of one sampling, seeded by its first row's seed."""

    vision: bool

    def generate(self, prompts: list[str], images: list[Any] | None, sampling: Sampling, seed: int) -> list[Generation]:
        raise NotImplementedError

    def stream(self, asks: list[Ask], batch_size: int) -> Iterator[tuple[int, Generation]]:
        batch: list[int] = []
        for i in range(len(asks) + 1):
            if batch and (i == len(asks) or len(batch) == batch_size or asks[i].sampling != asks[batch[0]].sampling):
                images = None
                if self.vision:
                    from PIL import Image

                    images = [Image.open(asks[j].image).convert("RGB") for j in batch]
                first = asks[batch[0]]
                gens = self.generate([asks[j].prompt for j in batch], images, first.sampling, first.seed)
                yield from zip(batch, gens, strict=True)
                batch = []
            if i < len(asks):
                batch.append(i)


def check_teacher(ref: str, *, vision: bool) -> str:
    """The teacher's kind, after checking that it is there and that it generates (one line if not)."""
    what = "rationales.vision_teacher" if vision else "rationales.teacher"
    config = kinds.read_model_config(ref, what=what)
    kind = kinds.kind_of(config, kinds.local_folder(ref, what), ref)
    if kind == kinds.ORIGINAL_LLAVA:
        raise kinds.original_layout_error(ref, what)
    arch = (config.get("architectures") or ["?"])[0]
    if not arch.endswith(_GENERATIVE):
        raise MlanError(f"{what} {ref}: {arch} does not generate text (expected a *ForCausalLM or LLaVA model)")
    if vision and kind not in kinds.MULTIMODAL_KINDS:
        raise MlanError(f"{what} {ref}: a {arch}, which cannot see images (expected a LLaVA or LLaVA-NeXT model)")
    return kind


class TransformersTeacher(BatchTeacher):
    """A model loaded by mlan.models: continuous batching for text rows, batched `generate` for image rows."""

    engine = "transformers"

    def __init__(self, ref: str, *, vision: bool, device: str | None, dtype: str):
        from mlan.generation import default_eos_ids
        from mlan.models import load_model

        kind = check_teacher(ref, vision=vision)
        self.loaded = load_model(ref, device=device, dtype=dtype, text_only=not vision and kind != kinds.CAUSAL_LM)
        self.name = ref
        self.vision = vision
        self.tokenizer = self.loaded.tokenizer
        self.tokenizer.padding_side = "left"
        self.eos_token = self.tokenizer.eos_token or ""
        self.eos_ids = default_eos_ids(self.loaded.model, self.tokenizer)

    def stream(self, asks: list[Ask], batch_size: int) -> Iterator[tuple[int, Generation]]:
        if self.vision:  # LLaVA's image rows: batched `generate`, as MLAN's vision teacher ran
            yield from super().stream(asks, batch_size)
            return
        from mlan.generation import Request, generate

        ids = self.tokenizer([a.prompt for a in asks])["input_ids"]  # MLAN's: the tokenizer's special tokens
        shared = {a.shared: self.tokenizer(a.shared)["input_ids"] for a in asks if a.shared}
        requests = [
            Request(
                tuple(x),
                a.sampling.max_new_tokens,
                temperature=a.sampling.temperature,
                top_p=a.sampling.top_p,
                top_k=0 if a.sampling.greedy else TOP_K,
                seed=a.seed,
                stop=a.stop,
                # The tokens the prompt and its shared start agree on (a token may straddle the boundary).
                prefix=_common(x, shared[a.shared]) if a.shared else 0,
            )
            for x, a in zip(ids, asks, strict=True)
        ]
        for i, out in generate(
            self.loaded.model, self.tokenizer, requests, batch_size=batch_size, eos_ids=self.eos_ids
        ):
            kept = out.ids[:-1] if out.ids and out.ids[-1] in self.eos_ids else out.ids
            yield i, Generation(self.tokenizer.decode(kept, skip_special_tokens=True), len(out.ids), out.finished)

    def _inputs(self, prompts: list[str], images: list[Any] | None):
        if self.vision:
            return self.loaded.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        # As MLAN's teacher: the tokenizer's own special tokens (BOS where it adds one), padded batch.
        return self.tokenizer(prompts, return_tensors="pt", padding=True)

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens per prompt (text only: for sorting and the summary; image tokens are not counted)."""
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def generate(self, prompts: list[str], images: list[Any] | None, sampling: Sampling, seed: int) -> list[Generation]:
        import torch

        inputs = {k: v.to(self.loaded.device) for k, v in self._inputs(prompts, images).items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.loaded.model.dtype)
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": not sampling.greedy}
        if not sampling.greedy:
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": TOP_K}
        torch.manual_seed(seed)  # the batch's draws depend on the spec's seed and the batch only
        with torch.inference_mode():
            out = self.loaded.model.generate(**inputs, **kwargs, pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        gens = []
        for ids in new:
            end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
            kept = ids if end is None else ids[:end]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            gens.append(Generation(text, len(kept) + (end is not None), end is not None))
        return gens


class VllmTeacher(BatchTeacher):
    """vLLM's offline engine: the same prompts and sampling, on CUDA GPUs, tensor-parallel if asked."""

    engine = "vllm"

    def __init__(self, ref: str, *, vision: bool, dtype: str, tensor_parallel_size: int, gpu_memory_utilization: float):
        check_teacher(ref, vision=vision)
        try:
            import torch
            from vllm import LLM
        except ImportError:
            raise MlanError(
                "rationales.engine vllm: vLLM is not installed (pip install mlan[vllm], on a CUDA machine)"
            ) from None
        if not torch.cuda.is_available():
            raise MlanError("rationales.engine vllm: needs a CUDA GPU (use engine: transformers on this machine)")
        try:
            self.llm = LLM(
                model=ref,
                dtype=dtype,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
            )
        except Exception as e:  # an architecture vLLM does not serve, too little memory: one line
            raise MlanError(f"rationales.engine vllm: cannot load {ref} ({first_line(e)})") from None
        self.name = ref
        self.vision = vision
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_token = self.tokenizer.eos_token or ""

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def stream(self, asks: list[Ask], batch_size: int) -> Iterator[tuple[int, Generation]]:
        """Every ask to vLLM at once, in chunks of `_VLLM_CHUNK` so the store grows while it runs: vLLM
        batches continuously itself, so mlan's `batch_size` does not apply."""
        from vllm import SamplingParams

        for lo in range(0, len(asks), _VLLM_CHUNK):
            chunk = asks[lo : lo + _VLLM_CHUNK]
            params = [
                SamplingParams(
                    temperature=a.sampling.temperature,
                    top_p=1.0 if a.sampling.greedy else a.sampling.top_p,
                    top_k=-1 if a.sampling.greedy else TOP_K,  # -1: vLLM's "all tokens"
                    max_tokens=a.sampling.max_new_tokens,
                    stop=list(a.stop) or None,
                    seed=a.seed,
                )
                for a in chunk
            ]
            requests: list[Any] = [a.prompt for a in chunk]
            if self.vision:
                from PIL import Image

                requests = [
                    {"prompt": a.prompt, "multi_modal_data": {"image": Image.open(a.image).convert("RGB")}}
                    for a in chunk
                ]
            outs = self.llm.generate(requests, params, use_tqdm=False)
            for i, o in enumerate(outs):
                c = o.outputs[0]
                yield lo + i, Generation(c.text, len(c.token_ids), c.finish_reason == "stop")


# Asks handed to vLLM per call: large enough to keep its scheduler full, small enough that a kill loses little.
_VLLM_CHUNK = 512


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
