"""Teachers: a model that continues a batch of raw prompts, sampled or greedy, and says how many tokens it
wrote and whether it stopped on its own.

- transformers (any device): the model loaded as every mlan stage loads it (mlan.models: a causal LM, or a
  LLaVA / LLaVA-NeXT for image rows), batched `generate` with left padding, as MLAN's teacher ran (batch of
  4, `padding=True`, IT_MLLM@af440a6 src/model_util.py:253-264); the random state is seeded per batch;
- vllm (CUDA GPUs, `pip install mlan[vllm]`): the same prompts and settings through vLLM's offline `LLM`,
  tensor-parallel for a 34B teacher; each prompt gets its own seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from mlan import kinds
from mlan.errors import MlanError, first_line

log = logging.getLogger(__name__)

# Architectures that end in these names generate text; anything else (an encoder, a classifier) cannot teach.
_GENERATIVE = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclass
class Generation:
    """One continuation: its text (special tokens left out), new tokens, and whether it ended in EOS."""

    text: str
    new_tokens: int
    finished: bool


@dataclass(frozen=True)
class Sampling:
    """How a teacher continues: sampled (temperature > 0) or greedy, and how far."""

    temperature: float
    top_p: float
    max_new_tokens: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Teacher(Protocol):
    name: str
    eos_token: str

    def prompt_tokens(self, prompts: list[str]) -> list[int]: ...

    def generate(
        self, prompts: list[str], images: list[Any] | None, sampling: Sampling, seed: int
    ) -> list[Generation]: ...


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


class TransformersTeacher:
    """Batched `generate` with a model loaded by mlan.models."""

    def __init__(self, ref: str, *, vision: bool, device: str | None, dtype: str):
        from mlan.models import load_model

        kind = check_teacher(ref, vision=vision)
        self.loaded = load_model(ref, device=device, dtype=dtype, text_only=not vision and kind != kinds.CAUSAL_LM)
        self.name = ref
        self.vision = vision
        self.tokenizer = self.loaded.tokenizer
        self.tokenizer.padding_side = "left"
        self.eos_token = self.tokenizer.eos_token or ""
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

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
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p}
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


class VllmTeacher:
    """vLLM's offline engine: the same prompts and sampling, on CUDA GPUs, tensor-parallel if asked."""

    def __init__(self, ref: str, *, vision: bool, dtype: str, tensor_parallel_size: int):
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
            self.llm = LLM(model=ref, dtype=dtype, tensor_parallel_size=tensor_parallel_size)
        except Exception as e:  # an architecture vLLM does not serve, too little memory: one line
            raise MlanError(f"rationales.engine vllm: cannot load {ref} ({first_line(e)})") from None
        self.name = ref
        self.vision = vision
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_token = self.tokenizer.eos_token or ""

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def generate(self, prompts: list[str], images: list[Any] | None, sampling: Sampling, seed: int) -> list[Generation]:
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed + i,
            )
            for i in range(len(prompts))
        ]
        requests: list[Any] = prompts
        if self.vision:
            requests = [
                {"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images or [], strict=True)
            ]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        gens = []
        for o in outs:
            c = o.outputs[0]
            gens.append(Generation(c.text, len(c.token_ids), c.finish_reason == "stop"))
        return gens


def open_teacher(ref: str, *, vision: bool, settings) -> Teacher:
    """The teacher the settings ask for (`rationales.engine`)."""
    if settings.engine == "vllm":
        return VllmTeacher(ref, vision=vision, dtype=settings.dtype, tensor_parallel_size=settings.tensor_parallel_size)
    return TransformersTeacher(ref, vision=vision, device=settings.device, dtype=settings.dtype)
