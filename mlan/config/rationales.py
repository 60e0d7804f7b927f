"""The `rationales` section of a mixture spec: which teacher explains each row's gold answer, how, and
where the explanations are kept (`mlan rationales` writes them; `targets: rationale` joins them).

Defaults are MLAN's teacher step as its authors' code runs it (ToviTu/IT_MLLM; facts and citations in
mlan/rationales/prompts.py): Yi-1.5-34B-Chat for language rows, sampled at temperature 0.15 and top_p
0.7, 800 new tokens for SQuAD and 512 for the others; LLaVA-NeXT-34B for image rows, greedy, 512 new
tokens. A section, not a YAML kind of its own; light on purpose (pydantic only).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlan.config.base import StrictModel


class RationaleSettings(StrictModel):
    """How `mlan rationales` asks a teacher model for every row's rationale."""

    teacher: str = "01-ai/Yi-1.5-34B-Chat"
    """Language teacher: a causal LM folder or hub id (MLAN: 01-ai/Yi-1.5-34B-Chat, IT_MLLM@af440a6
    src/model_util.py:224)."""
    vision_teacher: str = "llava-hf/llava-v1.6-34b-hf"
    """Teacher of image rows: a LLaVA or LLaVA-NeXT folder or hub id, loaded as mlan loads any LLaVA (MLAN:
    liuhaotian/llava-v1.6-34b in LLaVA's own layout, IT_MLLM@db5622b scripts/anno/lmm-eval.sh:3-14; this is
    its llava-hf conversion)."""
    temperature: float = Field(0.15, ge=0)
    """Sampling temperature of the language teacher; 0 decodes greedily (inference_yi_*_cot.py:30-31)."""
    top_p: float = Field(0.7, gt=0, le=1)
    """Nucleus sampling mass of the language teacher (inference_yi_*_cot.py:30-31)."""
    max_new_tokens: int = Field(512, gt=0)
    """New tokens per language rationale (inference_yi_*_cot.py: 512 but for SQuAD)."""
    max_new_tokens_by_adapter: dict[str, int] = Field(default_factory=lambda: {"squad": 800})
    """Per-adapter exceptions to `max_new_tokens` (MLAN: 800 for SQuAD, inference_yi_squad_cot.py:31)."""
    vision_max_new_tokens: int = Field(512, gt=0)
    """New tokens per image-row rationale; the vision teacher decodes greedily
    (IT_MLLM@db5622b scripts/anno/custom/vqav2/_default_template_vqav2_yaml:8-12)."""
    instruction: str | None = None
    """The instruction shown before each example; None: MLAN's, word for word (mlan.rationales.prompts)."""
    exemplars: dict[str, str] = Field(default_factory=dict)
    """Exemplar file per source name (a JSON list of {question, answer, rationale[, context]}), replacing
    the shipped MLAN exemplars of its adapter; required for `qa` sources, which have none shipped."""
    answer_wording: Literal["student", "mlan"] = "student"
    """What the teacher is shown as the gold answer. student: the wording the trained model will see
    (StrategyQA yes/no, A-OKVQA's options lettered as in the student's row). mlan: as MLAN's code showed it
    (StrategyQA True/False, A-OKVQA options without letters, so the teacher saw a letter it could not map)."""
    check_answer: bool = False
    """Keep a rationale only when its own conclusion names the gold answer (status `mismatch` otherwise).
    Off by default: MLAN kept every rationale."""
    batch_size: int = Field(8, gt=0)
    """Rows generated together by the transformers engine: text rows in a continuous batch (a row leaves when
    it ends, the next takes its place), image rows in batches sorted by length (MLAN used 4)."""
    engine: Literal["transformers", "vllm", "openai"] = "transformers"
    """transformers: on any device. vllm: vLLM's offline engine on CUDA GPUs (`pip install mlan[vllm]`).
    openai: any OpenAI-compatible server at `base_url` (vllm serve, SGLang, TGI, llama.cpp, transformers
    serve, a hosted model), serving `teacher` / `vision_teacher` by that name."""
    tensor_parallel_size: int = Field(1, gt=0)
    """GPUs one vLLM teacher is split over (a 34B teacher in bf16 needs two 80 GB GPUs)."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of each GPU's memory the vLLM engine takes for weights and its KV cache (vLLM's default)."""
    base_url: str | None = None
    """engine openai: the server's OpenAI API root, e.g. http://gpu-node:8000/v1."""
    api_key_env: str | None = None
    """engine openai: the environment variable holding the API key (the key itself is never in a spec, a
    store or a log); None: no key sent (a local server)."""
    endpoint: Literal["completions", "chat"] = "completions"
    """engine openai: completions sends MLAN's raw prompt to /v1/completions, as MLAN's teacher saw it;
    chat sends it as one user message to /v1/chat/completions, for hosted chat-only models (the server's
    chat template then wraps it: recorded per row)."""
    concurrency: int = Field(16, gt=0)
    """engine openai: requests in flight at once (a server batches them continuously)."""
    request_timeout: float = Field(600, gt=0)
    """engine openai: seconds one request may take before it is retried."""
    max_retries: int = Field(5, ge=0)
    """engine openai: retries of a request that timed out or got 429 / 5xx, with exponential backoff."""
    device: str | None = None
    """Device of a transformers teacher (cpu, cuda, mps); None: the first GPU, else the CPU."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype the teacher is loaded in."""
    store: str | None = None
    """The rationale store folder; default `runs/rationales/<mixture name>`."""
