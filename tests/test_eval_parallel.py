"""`mlan eval` and a `mlan merge` sweep under `accelerate launch` with 2 CPU processes (gloo): the questions
are split over the processes, and the results, per-question records and sweep scores are those of one
process; the options that cannot run here refuse in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sft_distributed import _free_port

REPO = Path(__file__).resolve().parents[1]
# One lm-eval task (log-likelihood), one unseen language task and one vision task (generate-then-match).
SUITES = ["--suite", "eight_task", "--suite", "unseen_language", "--suite", "unseen_vision"]
TASKS = ["--tasks", "arc_easy,boolq,pope"]


def _mlan(args: list, cwd: Path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "mlan", "-q", *map(str, args)]
    else:
        accelerate = Path(sys.executable).parent / "accelerate"
        cmd = [
            str(accelerate), "launch", "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"),
            "--num_processes", str(processes), "--main_process_port", str(_free_port()),
            "-m", "mlan", "-q", *map(str, args),
        ]  # fmt: skip
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p


def _scores(results_file: Path) -> list[dict]:
    """Everything results.json says about each task but its wall time and the backend's token counts (lm-eval
    pads a process's requests to the others' count, so the processes together run a few more tokens)."""
    data = json.loads(results_file.read_text())
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens")} for r in data["results"]] + data["averages"]


@pytest.mark.slow
def test_two_processes_give_the_one_process_results(tiny_llava_dir, eval_data, tmp_path):
    """Eight-task (lm-eval), unseen-language and vision tasks: the same scores and the same per-question
    records, byte for byte, from one process and from two; results.json names the processes and devices."""
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        args = ["eval", tiny_llava_dir, *SUITES, *TASKS, "--limit", "7", "--batch-size", "2"]
        args += ["--data-dir", eval_data, "--image-dir", eval_data / "images", "--out", out]
        p = _mlan(args, tmp_path, n)
        runs[n] = out / "tiny-llava"
        assert p.stdout.count("results:") == 1  # printed once, by the main process
    assert _scores(runs[1] / "results.json") == _scores(runs[2] / "results.json")
    assert {r["task"] for r in _scores(runs[1] / "results.json") if "task" in r} == {"arc_easy", "boolq", "pope"}
    samples = sorted(f.name for f in (runs[1] / "samples").iterdir())
    assert samples == ["unseen_language__boolq.jsonl", "unseen_vision__pope.jsonl"]
    for name in samples:
        assert (runs[1] / "samples" / name).read_bytes() == (runs[2] / "samples" / name).read_bytes()
    one, two = (json.loads((runs[n] / "results.json").read_text())["run"] for n in (1, 2))
    assert one == {"processes": 1, "devices": ["cpu"], "engine": "transformers", "backend": "mlan"}
    assert two == {"processes": 2, "devices": ["cpu", "cpu"], "engine": "transformers", "backend": "mlan"}


@pytest.mark.slow
def test_two_processes_share_a_merge_sweep(tiny_llava_dir, tmp_path):
    """A two-point merge sweep evaluated by two processes scores every point as one process does."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM, LlavaConfig

    torch.manual_seed(11)
    llm = LlamaForCausalLM(LlavaConfig.from_pretrained(tiny_llava_dir).text_config)
    llm.save_pretrained(tmp_path / "llm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_llava_dir / f, tmp_path / "llm" / f)
    points = {}
    for n in (1, 2):
        out = tmp_path / f"sweep{n}"
        args = ["merge", "--multimodal", tiny_llava_dir, "--original", tmp_path / "llm", "--alpha", "0,0.5"]
        args += ["--suite", "quickstart", "-o", "sweep.limit=4", "--out", out]
        _mlan(args, tmp_path, n)
        report = json.loads((out / "sweep.json").read_text())
        points[n] = [{k: v for k, v in p.items() if k != "seconds"} for p in report["points"]]
        assert not (out / "models").exists()
    assert points[1] == points[2] and [p["alpha"] for p in points[1]] == [0.0, 0.5]


def test_scale_options_refuse_in_one_line(cli, one_line_error, tiny_llava_dir, monkeypatch, tmp_path):
    """vLLM without vLLM or a GPU, device_map under several processes, a single merge under several
    processes: one line each, before any weights load."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        line = one_line_error(cli("eval", tiny_llava_dir, "--suite", "quickstart", "--engine", "vllm"))
        assert "engine vllm: vLLM is not installed (pip install 'mlan[vllm]', on a CUDA machine)" in line
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = one_line_error(cli("eval", tiny_llava_dir, "--suite", "quickstart", "--device-map", "auto"))
    assert "device_map auto: spreads one model over this machine's GPUs in one process" in line
    line = one_line_error(
        cli("merge", "--multimodal", tiny_llava_dir, "--original", tiny_llava_dir, "--out", tmp_path / "m")
    )
    assert "mlan merge: one merge runs in one process" in line


def test_lm_eval_parts_are_merged_in_document_order():
    """lm-eval deals documents out interleaved (rank r: r, r + W, ...): the per-rank metric lists, nested
    in dicts by task and metric, come back in document order, the other ranks' parts emptied."""
    from mlan.evaluate.parallel import _emptied, interleave

    parts = [
        {"arc": {("acc", "none"): [0.0, 1.0, 0.0], ("acc_norm", "none"): [10, 12, 14]}},
        {"arc": {("acc", "none"): [1.0, 1.0], ("acc_norm", "none"): [11, 13]}},
    ]
    merged = interleave(parts)
    assert merged == {"arc": {("acc", "none"): [0.0, 1.0, 1.0, 1.0, 0.0], ("acc_norm", "none"): [10, 11, 12, 13, 14]}}
    assert _emptied(merged) == {"arc": {("acc", "none"): [], ("acc_norm", "none"): []}}
    assert interleave([[0, 3], [1], [2]]) == [0, 1, 2, 3]
