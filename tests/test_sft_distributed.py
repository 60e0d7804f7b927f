"""The same `mlan sft` under `accelerate launch` with 2 CPU processes (DDP over gloo)."""

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

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_one_model(tiny_llava_dir, shared_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    mixture = make_mixture(tmp_path / "mix", shared_data, n_language=24, n_vision=8, n_long=1)
    out = tmp_path / "ddp"
    recipe = {
        "model": {"path": str(tiny_llava_dir)},
        "data": {"mixture": str(mixture)},
        "training": {
            "learning_rate": 1e-3,
            "num_train_epochs": 2,
            "per_device_train_batch_size": 4,
            "global_batch_size": 8,
            "max_length": 512,
            "precision": "fp32",
            "logging_steps": 1,
            "save_steps": 4,
        },
        "output": {"dir": str(out)},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch", "--config_file", str(REPO / "recipes" / "accelerate" / "cpu_ddp.yaml"),
        "--main_process_port", str(_free_port()), "-m", "mlan", "sft", str(tmp_path / "r.yaml"),
    ]  # fmt: skip
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]

    res = json.loads((out / "train_results.json").read_text())
    assert res["world_size"] == 2 and res["global_batch_size"] == 8 and res["gradient_accumulation_steps"] == 1
    # 32 rows / 8 per step, 2 epochs: each process saw its own half of every global batch.
    assert res["steps"] == 8
    assert len(res["rank_checksums"]) == 2 and res["rank_checksums"][0] == res["rank_checksums"][1]
    assert res["eval_loss"] is not None and res["last_loss"] < res["first_loss"]
    base, trained = load_file(str(tiny_llava_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(v, trained[k]) for k, v in base.items() if "language_model" in k)
    assert all(torch.equal(v, trained[k]) for k, v in base.items() if "vision_tower" in k)
    assert p.stdout.count("SFT: r") == 1  # one summary, from the main process
    # mlan's lines before training too: once, from the main process (the other says only what stops it)
    assert p.stderr.count("train rows:") == 1 and p.stderr.count("engine: DDP, 2 process(es)") == 1, p.stderr[-3000:]
    assert json.loads((tmp_path / "runs" / "latest.json").read_text())["path"] == str(out.resolve())
