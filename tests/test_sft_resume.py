"""Kill a real `mlan sft` run after a checkpoint, resume it, and get the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_sft import make_mixture

pytestmark = pytest.mark.slow


def _recipe(path: Path, model: Path, mixture: Path, out: Path) -> Path:
    recipe = {
        "model": {"path": str(model)},
        "data": {"mixture": str(mixture), "eval_at_end": False},
        "training": {
            "learning_rate": 1e-3,
            "max_steps": 24,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_length": 512,
            "precision": "fp32",
            "logging_steps": 1,
            "save_steps": 4,
        },
        "output": {"dir": str(out)},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def _mlan(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mlan", "-q", "sft", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _step_counter():
    """A TrainerCallback recording each finished step."""
    from transformers import TrainerCallback

    class StepCounter(TrainerCallback):
        seen: list[int]

        def on_step_end(self, args, state, control, **kwargs):
            self.seen.append(state.global_step)

    counter = StepCounter()
    counter.seen = []
    return counter


def test_kill_and_resume_matches_uninterrupted(cli, tiny_llava_dir, shared_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from mlan.config.base import load_config
    from mlan.config.recipe import SFTRecipe
    from mlan.train.sft import run_sft

    mixture = make_mixture(tmp_path / "mix", shared_data, n_language=24, n_vision=8, n_long=0)
    run_recipe = _recipe(tmp_path / "run.yaml", tiny_llava_dir, mixture, tmp_path / "run")
    ckpts = tmp_path / "run.checkpoints"

    victim = _mlan(str(run_recipe))
    deadline = time.time() + 240
    while not (ckpts / "checkpoint-8" / "trainer_state.json").is_file():
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.02)
    victim.kill()
    victim.wait()
    assert not (tmp_path / "run").exists(), "the run finished before it could be killed"

    # The uninterrupted reference and the resumed run go in process (no second start-up of torch),
    # single-threaded like the killed process so that every float sum runs in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = load_config(_recipe(tmp_path / "ref.yaml", tiny_llava_dir, mixture, tmp_path / "ref"), SFTRecipe)
        steps = _step_counter()
        run_sft(ref, callbacks=[steps])  # extra callbacks (benchmarks measure through them) see every step
        assert steps.seen == list(range(1, 25))
        r = cli("sft", str(run_recipe))  # no flag: resumes automatically from the last complete checkpoint
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output

    res = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert res["resumed_from"] and int(Path(res["resumed_from"]).name.split("-")[1]) >= 8
    assert res["steps"] == 24
    a, b = (
        load_file(str(tmp_path / "ref" / "model.safetensors")),
        load_file(str(tmp_path / "run" / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The loss log of the resumed run covers every step, the ones before the kill included.
    ref_log = json.loads((tmp_path / "ref" / "loss_log.json").read_text())["train"]
    run_log = json.loads((tmp_path / "run" / "loss_log.json").read_text())["train"]
    assert [p["step"] for p in run_log] == [p["step"] for p in ref_log] == list(range(1, 25))
    assert [p["loss"] for p in run_log] == [p["loss"] for p in ref_log]


def test_resume_refuses_checkpoints_of_another_recipe(cli, one_line_error, tiny_llava_dir, shared_data, tmp_path):
    from mlan.config.recipe import SFTRecipe
    from mlan.train.checkpoint import recipe_fingerprint

    mixture = make_mixture(tmp_path / "mix", shared_data, n_language=8, n_vision=4, n_long=0)
    recipe = _recipe(tmp_path / "run.yaml", tiny_llava_dir, mixture, tmp_path / "run")
    ck = tmp_path / "run.checkpoints" / "checkpoint-4"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text("{}")
    fp = recipe_fingerprint(SFTRecipe.model_validate(yaml.safe_load(recipe.read_text())))
    fp["training"]["learning_rate"] = 0.5
    (tmp_path / "run.checkpoints" / "recipe.json").write_text(json.dumps(fp))
    msg = one_line_error(cli("sft", str(recipe)))
    assert "training.learning_rate differ" in msg and "--no-resume" in msg
    # --no-resume discards them and trains from the start.
    r = cli("sft", str(recipe), "--no-resume", "-o", "training.max_steps=2")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["resumed_from"] is None
    assert not (tmp_path / "run.checkpoints").exists()
