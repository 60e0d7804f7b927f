"""mlan's lm-eval backend (mlan.evaluate.backend) against lm-eval's own HFLM on the same lm-eval tasks and
requests: per-request log-likelihoods within 1e-4 (float32), the same is_greedy, per-question predictions
and metrics, the same GSM8K generations; and `mlan eval --backend` choosing between them."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# The eight-task suite's loglikelihood tasks (GSM8K, the generate one, has its own test).
LOGLIKELIHOOD_TASKS = ["commonsense_qa", "arc_easy", "arc_challenge", "race_high", "hellaswag", "mmlu", "openbookqa"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llava_dir):
    """The tiny LLaVA in float32: make_lm scores it through its extracted language model."""
    from mlan.models import load_model

    return load_model(tiny_llava_dir, device="cpu", dtype="float32")


def _both(loaded, task_name: str, data_dir, limit: int, make=None):
    """lm-eval's results and per-document samples of one eight-task task, from HFLM and from mlan's backend."""
    from mlan.evaluate import load_suite
    from mlan.evaluate.backend import SharedContextLM
    from mlan.evaluate.harness import make_lm, run_lm_eval_tasks

    task = load_suite("eight_task").task(task_name)
    out = {}
    for backend in ("lm_eval", "mlan"):
        lm = make(backend) if make else make_lm(loaded, batch_size=4, backend=backend)
        assert isinstance(lm, SharedContextLM) == (backend == "mlan")
        out[backend] = run_lm_eval_tasks(lm, [task], data_dir=data_dir, limit=limit, log_samples=True)[task_name]
        out[backend]["lm"] = lm
    return out["lm_eval"], out["mlan"]


def _same_loglikelihoods(theirs: dict, ours: dict) -> int:
    """Every request's (log-likelihood, is_greedy) and every document's metrics agree; returns the requests."""
    assert len(theirs["samples"]) == len(ours["samples"]) > 0
    n = 0
    for a, b in zip(theirs["samples"], ours["samples"], strict=True):
        assert a["doc_id"] == b["doc_id"] and a["arguments"] == b["arguments"]
        for (ra,), (rb,) in zip(a["resps"], b["resps"], strict=True):
            assert abs(ra[0] - rb[0]) <= TOLERANCE, (a["doc_id"], ra, rb)
            assert ra[1] == rb[1], (a["doc_id"], ra, rb)
            n += 1
        # The per-question prediction, as each metric scored it (acc, acc_norm).
        assert {k: a[k] for k in a if k.startswith("acc")} == {k: b[k] for k in b if k.startswith("acc")}
    assert theirs["metrics"] == ours["metrics"] and theirs["n"] == ours["n"]
    return n


@pytest.fixture(scope="module")
def standin_data(tmp_path_factory):
    """100 RACE and HellaSwag questions in their schemas, made of bundled CosmosQA rows (tests/evaldata.py)."""
    from evaldata import write_standin_rows

    return write_standin_rows(tmp_path_factory.mktemp("standin"), 100)


@pytest.mark.parametrize("task_name", LOGLIKELIHOOD_TASKS)
def test_loglikelihoods_equal_hflm(task_name, tiny_loaded, eval_data, standin_data):
    """Each multiple-choice task's format on 100 questions (bundled rows; RACE and HellaSwag: stand-in rows in
    their schemas): HFLM's numbers, with fewer tokens computed where choices span several tokens."""
    data = standin_data if task_name in ("race_high", "hellaswag") else eval_data
    theirs, ours = _both(tiny_loaded, task_name, data, limit=100)
    assert ours["n"] == 100
    n = _same_loglikelihoods(theirs, ours)
    [stats] = ours["lm"].stats
    assert stats.requests == n and stats.questions == ours["n"]
    assert stats.tokens <= stats.tokens_lm_eval
    if task_name in ("arc_easy", "race_high", "hellaswag", "openbookqa"):  # multi-token choices share contexts
        assert stats.tokens < 0.7 * stats.tokens_lm_eval, stats


def _gsm8k_requests(data_dir, tmp_path, limit: int) -> list:
    """lm-eval's own GSM8K requests (5-shot prompts from the train split, its stop strings), as simple_evaluate
    builds them from the task YAML mlan hands it."""
    import yaml
    from lm_eval.tasks import TaskManager, get_task_dict

    from mlan.evaluate import load_suite
    from mlan.evaluate.harness import task_yaml

    cfg, _ = task_yaml(load_suite("eight_task").task("gsm8k"), data_dir, None, tmp_path)
    (tmp_path / "mlan_gsm8k.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    task = get_task_dict(["mlan_gsm8k"], TaskManager(include_path=str(tmp_path), include_defaults=False))["mlan_gsm8k"]
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task.instances


def test_gsm8k_generations_equal_hflm(tiny_loaded, eval_data, tmp_path):
    """GSM8K's requests, the same strings from HFLM's static batches and from continuous batching: lm-eval's
    stop strings with a 24-token budget, and (half of them, a second generation-arguments group) stops the
    tiny model does write, so texts end on the budget, on a stop string and on the EOS string's company."""
    from mlan.evaluate.harness import make_lm

    requests = _gsm8k_requests(eval_data, tmp_path, limit=16)
    for k, r in enumerate(requests):
        context, kwargs = r.arguments
        stops = kwargs["until"] + ([" the", "."] if k % 2 else [])
        r.arguments = (context, {**kwargs, "until": stops, "max_gen_toks": 24})
    theirs = make_lm(tiny_loaded, batch_size=4, backend="lm_eval").generate_until(requests, disable_tqdm=True)
    lm = make_lm(tiny_loaded, batch_size=4, backend="mlan")
    ours = lm.generate_until(requests, disable_tqdm=True)
    assert ours == theirs
    assert any(t for t in ours) and len(set(ours)) > 8
    [stats] = lm.stats
    assert (stats.kind, stats.questions, stats.requests) == ("generate_until", 16, 16)
    assert stats.tokens <= stats.tokens_lm_eval


def test_gsm8k_task_equals_hflm(tiny_loaded, eval_data):
    """GSM8K end to end through lm-eval (5-shot, its 256-token budget): the same generations, filtered answers,
    per-question scores and metrics."""
    theirs, ours = _both(tiny_loaded, "gsm8k", eval_data, limit=8)
    for a, b in zip(theirs["samples"], ours["samples"], strict=True):
        assert a["resps"] == b["resps"] and a["filtered_resps"] == b["filtered_resps"]
        assert {k: a[k] for k in a if k.startswith("exact_match")} == {
            k: b[k] for k in b if k.startswith("exact_match")
        }
    assert theirs["metrics"] == ours["metrics"] and ours["n"] == 8


def test_plain_causal_lm_and_left_truncation(tiny_llava_dir, eval_data, tmp_path):
    """A plain causal LM loaded from its folder, with a window short enough that some (context, choice) pairs
    are cut from the left: those rows are HFLM's own, the others shared, and every number is HFLM's."""
    from lm_eval.models.huggingface import HFLM

    from mlan.evaluate.backend import SharedContextLM
    from mlan.models import load_model, save_language_model

    loaded = load_model(save_language_model(tiny_llava_dir, tmp_path / "llm"), device="cpu", dtype="float32")
    assert not loaded.multimodal

    def make(backend):
        cls = SharedContextLM if backend == "mlan" else HFLM
        return cls(pretrained=loaded.model, tokenizer=loaded.tokenizer, backend="causal", batch_size=3, max_length=40)

    theirs, ours = _both(loaded, "arc_easy", eval_data, limit=40, make=make)
    lengths = [len(c) + len(k) for _, c, k in _requests(ours["lm"], theirs["samples"])]
    assert min(lengths) <= 41 < max(lengths)  # both paths ran
    _same_loglikelihoods(theirs, ours)


def _requests(lm, samples):
    """The (strings, context ids, continuation ids) lm-eval's tokenization makes of these samples' requests."""
    return [(None, *lm._encode_pair(*args)) for s in samples for args in s["arguments"]]


def test_edge_requests_equal_hflm(tiny_loaded):
    """Hand-made requests through `loglikelihood`: an empty context (the prefix token), trailing spaces moved
    to the continuation, one context with one-token and longer continuations, a continuation whose first
    token merges with the context's end, and the same context in two documents."""
    from lm_eval.api.instance import Instance

    from mlan.evaluate.harness import make_lm

    pairs = [
        ("", "The sky is blue."),
        ("Question: what colour is the sky?\nAnswer: ", "blue"),
        ("Question: what colour is the sky?\nAnswer: ", "the colour of the deep sea at noon"),
        ("Question: what colour is the sky?\nAnswer:", " B"),
        ("Question: what colour is the sky?\nAnswer:", " blue, mostly"),
        ("Question: what colour is the sky?\nAnswer:", "blueish"),
        ("A man is sitting on a roof. he", " starts pulling up roofing on a roof."),
        ("A man is sitting on a roof. he", " is holding a rubik's cube."),
    ]
    requests = [
        Instance("loglikelihood", doc={}, arguments=p, idx=i, metadata=("edge", i // 2, 1)) for i, p in enumerate(pairs)
    ]
    theirs = make_lm(tiny_loaded, batch_size=2, backend="lm_eval").loglikelihood(requests, disable_tqdm=True)
    lm = make_lm(tiny_loaded, batch_size=2, backend="mlan")
    ours = lm.loglikelihood(requests, disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(theirs, ours, strict=True):
        assert abs(la - lb) <= TOLERANCE and ga == gb
    [stats] = lm.stats
    assert (stats.questions, stats.requests) == (4, len(pairs))


def test_wings_model_equals_hflm(tiny_llava_dir, eval_data):
    """A Wings model is handed over as the LLaVA itself (its learners hook into the LLaVA's forward): its
    contexts are scored by HFLM's path, with HFLM's numbers."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mlan.config.wings import WingsConfig
    from mlan.models import LoadedModel
    from mlan.wings import add_wings

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    add_wings(model, WingsConfig(router="modality"), processor=processor)
    loaded = LoadedModel("wings", model, processor.tokenizer, processor, multimodal=True)
    theirs, ours = _both(loaded, "arc_easy", eval_data, limit=12)
    assert ours["lm"].model is model
    _same_loglikelihoods(theirs, ours)


def test_cli_backend_choice(cli, tiny_llava_dir, eval_data, tmp_path):
    """`mlan eval` scores with mlan's backend by default (its token counts in results.json show it ran) and
    with lm-eval's HFLM under `--backend lm_eval`, to the same scores; the backend is recorded per task and run."""
    rows = {}
    for flag in ([], ["--backend", "lm_eval"]):
        out = tmp_path / (flag[-1] if flag else "default")
        args = ["eval", tiny_llava_dir, "--tasks", "arc_easy,openbookqa", "--limit", "12", "--batch-size", "4"]
        r = cli(*args, "--data-dir", eval_data, "--out", out, "--device", "cpu", *flag)
        assert r.exit_code == 0, r.output
        data = json.loads((out / "tiny-llava" / "results.json").read_text())
        rows[flag[-1] if flag else "mlan"] = data
    ours, theirs = rows["mlan"], rows["lm_eval"]
    assert ours["run"]["backend"] == "mlan" and theirs["run"]["backend"] == "lm_eval"
    for a, b in zip(ours["results"], theirs["results"], strict=True):
        assert (a["backend"], b["backend"]) == ("mlan", "lm_eval")
        assert a["metrics"] == b["metrics"]
        assert b["tokens"] == {}
        assert a["tokens"]["questions"] == 12 and 0 < a["tokens"]["computed"] < a["tokens"]["lm_eval"]


def test_bad_backend_is_one_line(cli, one_line_error, tiny_llava_dir):
    line = one_line_error(cli("eval", tiny_llava_dir, "--backend", "vllm"))
    assert "backend" in line and "lm_eval" in line
