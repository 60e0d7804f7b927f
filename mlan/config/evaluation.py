"""The evaluation run config (`mlan eval`): which models, which suites, which data, where results go.

`mlan eval MODEL... --flags` and `mlan eval run.yaml` both build one `EvalRun`, and
`mlan.evaluate.run_evaluation(EvalRun)` runs it, so a run is reproducible from its YAML
(`results.json` records it) and reachable from Python without the CLI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mlan.config.base import StrictModel

DEFAULT_SUITE = "eight_task"
UNSEEN_SUITES = ("unseen_language", "unseen_vision")


class EvalRun(StrictModel):
    """One evaluation run."""

    models: list[str] = Field(
        default_factory=list,
        description="Model folders or hub ids (LLaVA or plain causal LM); empty: the newest finished run under runs/.",
    )
    suites: list[str] = Field(
        default_factory=lambda: [DEFAULT_SUITE],
        description="Suite names (shipped: eight_task, unseen_language, unseen_vision, ...) or YAML files.",
    )
    unseen: bool = Field(False, description="Add MLAN's unseen language and vision suites to `suites`.")
    tasks: list[str] | None = Field(None, description="Only these tasks (across the suites); all when unset.")
    limit: int | None = Field(None, gt=0, description="At most this many questions per task (the first ones).")
    data_dir: str | None = Field(None, description="Local data for every task: <data_dir>/<task>/<split>.jsonl.")
    data: dict[str, str] = Field(
        default_factory=dict, description="Local data file per task, {task: file}; wins over data_dir and the suite."
    )
    image_dir: str | None = Field(None, description="Folder where image file names in local rows are looked up.")
    out: str = Field("runs/eval", description="Results folder; its per-task cache makes reruns resume.")
    reference: str | None = Field(
        None, description="Model (path or label) deltas are computed against; default: the first of several."
    )
    batch_size: int = Field(8, gt=0, description="Questions per forward pass.")
    device: str | None = Field(None, description="cuda, cpu, ... (default: cuda when a GPU is visible).")
    device_map: str | None = Field(
        None,
        description="auto, balanced, ...: one model spread over this machine's GPUs (transformers' device_map), for "
        "models larger than one GPU; one process only.",
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Generation engine of the generate suites: transformers' generate, or vLLM (the `vllm` extra, "
        "a GPU): same prompts, stops and greedy decoding.",
    )
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs vLLM spreads one model over (`engine: vllm`).")
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of each GPU's memory vLLM takes for weights and its KV cache (`engine: vllm`; vLLM's "
        "default). The transformers model of the lm-eval suites is freed before vLLM starts.",
    )
    backend: Literal["mlan", "lm_eval"] = Field(
        "mlan",
        description="Model backend of the lm-eval suites: mlan's (lm-eval's HFLM with each multiple-choice context "
        "computed once and generation batched continuously; the same scores) or lm_eval (HFLM itself, for comparison).",
    )
    dtype: str = Field("auto", description="auto (the checkpoint's own), bfloat16, float16 or float32.")
    fresh: bool = Field(False, description="Ignore cached task results and recompute them.")
    suite_overrides: list[str] = Field(
        default_factory=list,
        description="FIELD=VALUE set on every suite, e.g. max_new_tokens=16 (`mlan eval -o suite.FIELD=VALUE`).",
    )

    @field_validator("suites")
    @classmethod
    def _some_suite(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one suite")
        return v

    def suite_names(self) -> list[str]:
        """`suites`, plus MLAN's unseen suites when `unseen` is set (each once, in order)."""
        names = list(self.suites)
        if self.unseen:
            names += [s for s in UNSEEN_SUITES if s not in names]
        return names
