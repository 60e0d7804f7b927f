"""`mlan eval --engine vllm` over suites that also need the transformers model: the lm-eval tasks run first,
and the transformers model is freed before vLLM starts, so the GPU never holds both (vLLM reserves
`gpu_memory_utilization` of it). vLLM itself needs a CUDA GPU: here a stand-in records what it was handed."""

from __future__ import annotations

import gc
import weakref

from mlan.config.evaluation import EvalRun
from mlan.evaluate import load_suite, run_evaluation


def test_vllm_starts_after_the_transformers_model_is_freed(monkeypatch, tiny_llava_dir, eval_data, tmp_path):
    import mlan.evaluate.run as run_module
    import mlan.evaluate.vllm_engine as vllm_engine
    from mlan.evaluate.generate import HFGenerator
    from mlan.models import load_model

    events: list[str] = []
    models: list[weakref.ref] = []
    real_load = run_module.load_model

    def load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        models.append(weakref.ref(loaded.model))
        events.append("transformers loaded")
        return loaded

    class StandIn(HFGenerator):
        """vLLM's place: checks that no transformers model of the run is alive, then generates on its own copy."""

        def __init__(self, model, run):
            gc.collect()
            events.append("vllm starts: " + ("model alive" if any(m() is not None for m in models) else "freed"))
            self.memory_share = run.gpu_memory_utilization
            super().__init__(load_model(str(model), device="cpu"), batch_size=run.batch_size)

    monkeypatch.setattr(run_module, "load_model", load)
    monkeypatch.setattr(vllm_engine, "check_vllm", lambda run, many: None)
    monkeypatch.setattr(vllm_engine, "VLLMGenerator", StandIn)
    # The generate suite listed first: the lm-eval task still runs before it.
    suites = [load_suite("quickstart"), load_suite("eight_task")]
    run = EvalRun(
        models=[str(tiny_llava_dir)],
        tasks=["boolq", "arc_easy"],
        limit=3,
        data_dir=str(eval_data),
        out=str(tmp_path),
        engine="vllm",
        gpu_memory_utilization=0.5,
    )
    report = run_evaluation(run, suites=suites)
    assert events == ["transformers loaded", "vllm starts: freed"]
    (model,) = report.models
    assert [(r.suite, r.task) for r in model.results] == [
        ("quickstart", "boolq"),
        ("quickstart", "arc_easy"),
        ("eight_task", "arc_easy"),
    ]  # reported in the suites' order
    assert "then cuda x1 (vLLM)" in model.run["devices"][0]
