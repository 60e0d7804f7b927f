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


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_record(recipe_file: Path, model: Path, content_hash: str) -> dict:
    """The run record written out by hand from what the run was made of (not by mlan's record code):
    the recipe as validated (minus the fields that may change: where the output goes, names, trackers),
    the manifest's content hash, every file of the start model but its card hashed whole (a tiny
    model's files are all small), and mlan's version."""
    from mlan import __version__
    from mlan.config.recipe import SFTRecipe

    recipe = SFTRecipe.model_validate(yaml.safe_load(recipe_file.read_text())).model_dump(mode="json")
    for key in ("output", "name", "description"):
        del recipe[key]
    del recipe["training"]["report_to"]
    files = {p.name: _sha256(p) for p in sorted(model.iterdir()) if p.suffix != ".md"}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    return {
        "recipe": recipe,
        "mixture": {"content_hash": content_hash},
        "model": {"files": files},
        "mlan_version": __version__,
    }


def test_resume_refuses_a_run_made_of_other_things(cli, one_line_error, tiny_llava_dir, shared_data, tmp_path):
    """A run records what it was made of; a resumption with any one part changed (the recipe, the rows of
    a mixture rebuilt at the same path, another model saved at the same path, another mlan version, or no
    record at all) is refused in one line naming the part; with nothing changed it resumes."""
    import shutil

    import mlan
    from mlan.tiny import save_tiny_llava

    mixture = make_mixture(tmp_path / "mix", shared_data, n_language=8, n_vision=4, n_long=0)
    manifest = mixture / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "content_hash": "rows-a"}))
    model = tmp_path / "model"
    shutil.copytree(tiny_llava_dir, model)
    recipe = _recipe(tmp_path / "run.yaml", model, mixture, tmp_path / "run")
    spec = yaml.safe_load(recipe.read_text())
    spec["training"].update(max_steps=2, save_steps=1)
    spec["output"]["keep_checkpoints"] = True
    recipe.write_text(yaml.safe_dump(spec))
    r = cli("sft", str(recipe))
    assert r.exit_code == 0, r.output
    ckpts = tmp_path / "run.checkpoints"
    saved = ckpts / "run_record.json"
    assert json.loads(saved.read_text()) == _expected_record(recipe, model, "rows-a")
    # The kept checkpoints carry the record too.
    assert (tmp_path / "run" / "checkpoints" / "run_record.json").read_text() == saved.read_text()

    def killed() -> None:
        """As if the run had been killed after its last checkpoint: the checkpoint where the Trainer
        wrote it, no output folder."""
        shutil.move(tmp_path / "run" / "checkpoints" / "checkpoint-2", ckpts / "checkpoint-2")
        shutil.rmtree(tmp_path / "run")

    def refused() -> str:
        msg = one_line_error(cli("sft", str(recipe)))
        assert "checkpoints of another run" in msg and "--no-resume" in msg, msg
        return msg

    killed()
    # The recipe: one field.
    msg = one_line_error(cli("sft", str(recipe), "-o", "training.learning_rate=0.5"))
    assert "the recipe (training.learning_rate) changed" in msg, msg
    # The rows: the mixture rebuilt at the same path.
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "content_hash": "rows-b"}))
    assert "the mixture's rows (content_hash) changed" in refused()
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "content_hash": "rows-a"}))
    # The start model: another model saved at the same path (same config and tokenizer, other weights).
    save_tiny_llava(model, size="tiny", seed=1, overwrite=True)
    assert "the start model (files.model.safetensors) changed" in refused()
    save_tiny_llava(model, size="tiny", seed=0, overwrite=True)
    # mlan's version.
    real = mlan.__version__
    mlan.__version__ = "9.9.9"
    try:
        assert f"the mlan version ({real} -> 9.9.9) changed" in refused()
    finally:
        mlan.__version__ = real

    # Nothing changed: it resumes (from the last checkpoint, at max_steps already).
    r = cli("sft", str(recipe))
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["resumed_from"].endswith("checkpoint-2")

    # No record: nothing says what the checkpoints were trained from.
    killed()
    saved.unlink()
    msg = one_line_error(cli("sft", str(recipe)))
    assert "without a run record (run_record.json)" in msg and "--no-resume" in msg, msg
    # --no-resume discards them and trains from the start.
    r = cli("sft", str(recipe), "--no-resume")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["resumed_from"] is None
