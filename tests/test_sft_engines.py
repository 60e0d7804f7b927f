"""`mlan sft` under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 on 2 CPU processes (gloo), as a user launches it.

Each engine, for full fine-tuning, LoRA and Wings: (a) the engine really ran (accelerate's distributed
type, and the largest parameter held in halves), (b) the loss at every step is the one-process run's at
the same global batch, (c) the saved model reloads equal to the weights gathered from the engine, (d) a
run killed (SIGKILL on every process) after a checkpoint and started again ends with the weights of the
uninterrupted one-process run. Launchers: ZeRO-3 full through `accelerate launch` with the shipped
config (the command docs/training.md gives), ZeRO-2 full through the `deepspeed` launcher, the rest
through torchrun with `training.engine`; FSDP2 through the test-only CPU shim in tests/engine_launch.py.
The precision plan (mlan's default fp32 masters against pure bf16) and the refusals are tested too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_sft import make_mixture

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "tests" / "engine_launch.py"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine_mixture(shared_data, tmp_path_factory) -> Path:
    return make_mixture(tmp_path_factory.mktemp("engine-mix"), shared_data, n_language=24, n_vision=8, n_long=0)


def _recipe(folder: Path, model: Path, mixture: Path, mode: str, **training) -> dict:
    recipe = {
        "model": {"path": str(model)},
        "data": {"mixture": str(mixture), "eval_at_end": False},
        "training": {
            "learning_rate": 1e-3,
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "global_batch_size": 8,
            "max_length": 512,
            "precision": "fp32",
            "warmup_ratio": 0.0,
            "logging_steps": 1,
            "save_steps": 2,
            **training,
        },
        "output": {"dir": str(folder / "out")},
    }
    if mode == "lora":
        recipe["train"] = {"language_model": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    if mode == "wings":
        recipe["wings"] = {"stage": 1, "rank": 4, "stage1": {"projector": 1e-3, "visual_learners": 1e-3}}
        del recipe["training"]["learning_rate"]
    return recipe


def _write(folder: Path, recipe: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _reference(tmp_path: Path, model: Path, mixture: Path, mode: str) -> Path:
    """The same recipe on one process (in this one), uninterrupted: the loss and weights to match."""
    from mlan.config.recipe import SFTRecipe
    from mlan.train.sft import run_sft

    recipe = SFTRecipe.model_validate(_recipe(tmp_path / "one", model, mixture, mode))
    return run_sft(recipe, overwrite=True).output_dir


def _launch(launcher: str, recipe: Path, cwd: Path, probe: Path, *, kill_after: int | None = None, shim=False):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "MLAN_TEST_PROBE": str(probe),
    }
    env.pop("MLAN_TEST_KILL_AFTER_SAVE", None)
    if kill_after:
        env["MLAN_TEST_KILL_AFTER_SAVE"] = str(kill_after)
    if shim:
        env["MLAN_TEST_FSDP_ON_CPU"] = "1"
    port = str(_free_port())
    script = [str(LAUNCH), "-q", "sft", str(recipe)]
    if launcher == "torchrun":
        cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", port, *script]
    elif launcher == "deepspeed":
        cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, *script]
    else:  # an accelerate config of recipes/accelerate/
        config = REPO / "recipes" / "accelerate" / launcher
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(config), "--num_processes", "2"]
        cmd += ["--main_process_port", port, *script]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _losses(out: Path) -> list[float]:
    return [p["loss"] for p in json.loads((out / "loss_log.json").read_text())["train"]]


def _trained(out: Path, mode: str) -> dict:
    """The trained tensors of an output folder, by in-memory parameter name (float32)."""
    import torch
    from safetensors.torch import load_file

    if mode == "lora":
        return {k: v.float() for k, v in load_file(str(out / "adapter_model.safetensors")).items()}
    from mlan import kinds

    tensors = {kinds.current_name(k): v.float() for k, v in load_file(str(out / "model.safetensors")).items()}
    if mode == "wings":
        tensors.update({f"wings:{k}": v.float() for k, v in load_file(str(out / "wings.safetensors")).items()})
    del torch
    return tensors


RUNS = [
    # engine, launcher, mode, shim
    ("zero3", "deepspeed_zero3.yaml", "full", False),
    ("zero2", "deepspeed", "full", False),
    ("fsdp2", "torchrun", "full", True),
    ("zero3", "torchrun", "lora", False),
    ("zero2", "torchrun", "lora", False),
    ("fsdp2", "torchrun", "lora", True),
    ("zero3", "torchrun", "wings", False),
    ("zero2", "torchrun", "wings", False),
    ("fsdp2", "torchrun", "wings", True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "launcher", "mode", "shim"), RUNS, ids=[f"{r[0]}-{r[2]}" for r in RUNS])
def test_engine_trains_saves_and_resumes_as_one_process(
    engine, launcher, mode, shim, tiny_llava_dir, engine_mixture, tmp_path
):
    import torch
    from safetensors.torch import load_file

    reference = _reference(tmp_path, tiny_llava_dir, engine_mixture, mode)
    training = {} if launcher.endswith(".yaml") else {"engine": engine}
    folder = tmp_path / engine
    recipe = _write(folder, _recipe(folder, tiny_llava_dir, engine_mixture, mode, **training))
    probe = tmp_path / "probe"
    probe.mkdir()

    killed = _launch(launcher, recipe, tmp_path, probe, kill_after=2, shim=shim)
    assert killed.returncode != 0, "the run was not killed"
    assert (folder / "out.checkpoints" / "checkpoint-2" / "trainer_state.json").is_file(), killed.stderr[-3000:]
    assert not (folder / "out").exists()
    # (a) the engine ran, and the largest parameter was held in halves
    for rank in (0, 1):
        seen = json.loads((probe / f"rank{rank}.json").read_text())
        assert seen["distributed_type"] == ("FSDP" if engine == "fsdp2" else "DEEPSPEED"), seen
        assert seen["world_size"] == 2
        if engine != "zero2":  # ZeRO-2 keeps every parameter whole and splits gradients and optimizer states
            assert seen["local"] * 2 == seen["full"], seen

    done = _launch(launcher, recipe, tmp_path, probe, shim=shim)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = folder / "out"
    results = json.loads((out / "train_results.json").read_text())
    assert results["resumed_from"].endswith("checkpoint-2")
    assert results["world_size"] == 2 and results["global_batch_size"] == 8
    assert results["engine"]["name"] == ("fsdp2" if engine == "fsdp2" else "deepspeed")
    assert results["engine"]["source"] == ("launcher" if launcher.endswith(".yaml") else "recipe")
    if engine != "fsdp2":
        assert results["engine"]["zero_stage"] == int(engine[-1])
    assert results["precision_plan"]["master"] == "fp32 (engine)"

    # (b) the loss at every step, the steps before the kill included, is the one-process run's
    assert _losses(out) == pytest.approx(_losses(reference), rel=1e-4)
    # (c) what was saved is what the engine held, gathered
    gathered = load_file(str(probe / "gathered.safetensors"))
    saved = _trained(out, mode)
    for name, tensor in gathered.items():
        key = _saved_key(name, mode)
        torch.testing.assert_close(saved[key], tensor, rtol=0, atol=0, msg=name)
    # (d) killed and resumed, the weights are the uninterrupted one-process run's
    expected = _trained(reference, mode)
    assert set(saved) == set(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(saved[key], tensor, rtol=1e-4, atol=1e-6, msg=key)


def _saved_key(name: str, mode: str) -> str:
    """Where a gathered parameter is in the saved files (see `_trained`)."""
    import re

    if mode == "lora":
        # PEFT saves `base_model.model.<path>.lora_A.weight` for the parameter `...lora_A.default.weight`.
        return name.replace(".modules_to_save", "").replace(".default", "")
    m = re.fullmatch(r".*layers\.(\d+)\.wings\.(.+)", name)
    if mode == "wings" and m:
        return f"wings:layers.{m.group(1)}.{m.group(2)}"
    return name
