"""vLLM for the generate suites (`--engine vllm`, the `vllm` extra, CUDA GPUs).

The same requests the transformers generator gets (mlan.evaluate.generate: the suite's prompt, image and
BOS choice), the same greedy decoding, the same stop strings and token budget; vLLM batches them
continuously, which is where its speed comes from. A prompt without BOS goes in as token ids, so vLLM adds
no special token the transformers run would not have. A Wings model is not served by vLLM (its learners
are mlan's own modules), and vLLM runs in one process: it spreads a model over GPUs itself
(`tensor_parallel_size`). Not run on this project's CI machine (no GPU): `check_vllm` refuses there in one line.
"""

from __future__ import annotations

from typing import Any

from mlan.errors import MlanError, first_line


def check_vllm(run, many_processes: bool) -> None:
    """Every reason `--engine vllm` cannot run here, one line each, before any weights load."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise MlanError("engine vllm: vLLM is not installed (pip install 'mlan[vllm]', on a CUDA machine)")
    import torch

    if not torch.cuda.is_available() or (run.device or "cuda").startswith("cpu"):
        raise MlanError("engine vllm: needs a CUDA GPU (use --engine transformers on this machine)")
    if many_processes:
        raise MlanError(
            "engine vllm: run it in one process (not under accelerate launch / torchrun); vLLM spreads a model "
            "over the GPUs itself (tensor_parallel_size)"
        )
    if run.device_map is not None:
        raise MlanError("engine vllm: device_map is transformers' own; vLLM uses tensor_parallel_size instead")


class VLLMGenerator:
    """The generator interface of mlan.evaluate.generate (`generate(requests, max_new_tokens, stop)`) on vLLM."""

    reports_batches = True

    def __init__(self, model: str, run) -> None:
        from transformers import AutoProcessor

        from mlan import kinds

        kind = kinds.model_kind(model)
        if kind == kinds.WINGS:
            raise MlanError(f"{model}: engine vllm does not serve Wings models (use --engine transformers)")
        from vllm import LLM

        dtype = "auto" if run.dtype == "auto" else run.dtype
        try:
            self.llm = LLM(
                model=str(model),
                dtype=dtype,
                tensor_parallel_size=run.tensor_parallel_size,
                gpu_memory_utilization=run.gpu_memory_utilization,
            )
        except Exception as e:  # an architecture vLLM does not serve, too little memory: one line
            raise MlanError(f"engine vllm: cannot load {model} ({first_line(e)})") from None
        self.multimodal = kind in kinds.MULTIMODAL_KINDS
        self.tokenizer = self.llm.get_tokenizer()
        # The chat template and image padding colour come from the model's own processor, as with transformers.
        self.processor = AutoProcessor.from_pretrained(str(model)) if self.multimodal else None
        self.loaded = None  # no transformers model: `image_aspect_ratio: model` reads the config below
        self.config = self.llm.llm_engine.model_config.hf_config

    def apply_chat(self, messages: list[dict]) -> str:
        owner = self.processor or self.tokenizer
        out = owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        bos = self.tokenizer.bos_token
        return out[len(bos) :] if bos and out.startswith(bos) else out

    def generate(self, requests, *, max_new_tokens: int, stop: list[str], on_batch=None) -> list[str]:
        from vllm import SamplingParams

        from mlan.evaluate.generate import cut_at_stop
        from mlan.images import prepare_image

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=[s for s in stop if s] or None)
        prompts: list[Any] = []
        for r in requests:
            ids = self.tokenizer(r.prompt, add_special_tokens=r.bos)["input_ids"]
            prompt: dict[str, Any] = {"prompt_token_ids": ids}
            if r.image is not None:
                prompt["multi_modal_data"] = {"image": prepare_image(r.image, self.processor, r.image_aspect_ratio)}
            prompts.append(prompt)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        if on_batch:
            on_batch(len(requests))
        return [cut_at_stop(o.outputs[0].text, stop) for o in outs]
