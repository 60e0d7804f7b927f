"""Wings through `mlan sft`: stage 1 then stage 2 on the tiny LLaVA, what each stage trains, the Wings
output folder, reloading, `mlan eval`, `mlan merge`, resuming with the learners, bad input."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sft import make_mixture

# Every test here uses `stages`, two short training runs.
pytestmark = pytest.mark.slow

STEPS = 8


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, shared_data) -> Path:
    return make_mixture(tmp_path_factory.mktemp("wings-mix") / "mixture", shared_data, 16, 16, n_long=0)


@pytest.fixture(scope="module")
def text_mixture(tmp_path_factory, shared_data) -> Path:
    return make_mixture(tmp_path_factory.mktemp("wings-text-mix") / "mixture", shared_data, 8, 0, n_long=0)


def _args(recipe: str, model: Path, mixture: Path, out: Path, *extra: str) -> list[str]:
    """`mlan sft <shipped Wings recipe>` on a given model and built mixture, short and logged every step."""
    args = ["sft", recipe, "-o", f"model.path={model}", "-o", "data.spec=", "-o", f"data.mixture={mixture}"]
    args += ["-o", f"output.dir={out}", "-o", f"training.max_steps={STEPS}", "-o", "training.logging_steps=1"]
    return [*args, *extra]


@pytest.fixture(scope="module")
def stages(tiny_llava_dir, mixture, tmp_path_factory) -> dict[str, Path]:
    """Stage 1 from the plain tiny LLaVA, then stage 2 from stage 1's output (checkpoints kept), via the CLI."""
    from typer.testing import CliRunner

    from mlan.cli import app

    root = tmp_path_factory.mktemp("wings-runs")
    runner = CliRunner()
    out1, out2 = root / "stage1", root / "stage2"
    r = runner.invoke(app, _args("wings_tiny_stage1", tiny_llava_dir, mixture, out1), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    extra = ["-o", "training.save_steps=4", "-o", "output.keep_checkpoints=true"]
    r = runner.invoke(app, _args("wings_tiny", out1, mixture, out2, *extra), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"base": tiny_llava_dir, "stage1": out1, "stage2": out2, "root": root}


def _parts(weights: dict) -> dict[str, dict]:
    def part(k: str) -> str:
        if "vision_tower" in k:
            return "vision_tower"
        if "multi_modal_projector" in k:
            return "projector"
        return "language_model"  # decoder, embeddings and head

    out: dict[str, dict] = {}
    for k, v in weights.items():
        out.setdefault(part(k), {})[k] = v
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _learners(folder: Path, kind: str) -> dict:
    return {k: v for k, v in load_file(str(folder / "wings.safetensors")).items() if f".{kind}." in k}


def _losses(folder: Path) -> list[float]:
    return [p["loss"] for p in json.loads((folder / "loss_log.json").read_text())["train"]]


def test_two_stages_train_the_right_parts(stages):
    base = _parts(load_file(str(stages["base"] / "model.safetensors")))
    s1 = _parts(load_file(str(stages["stage1"] / "model.safetensors")))
    s2 = _parts(load_file(str(stages["stage2"] / "model.safetensors")))
    # Stage 1: projector (and visual learners) only; language model and vision tower bit-identical.
    assert _same(s1["vision_tower"], base["vision_tower"]) and _same(s1["language_model"], base["language_model"])
    assert not _same(s1["projector"], base["projector"])
    v1, t1, r1 = (_learners(stages["stage1"], k) for k in ("visual", "textual", "router"))
    assert any(v.abs().sum() > 0 for k, v in v1.items() if k.endswith("_b"))  # B starts at zero: it trained
    assert all(v.abs().sum() == 0 for k, v in t1.items() if k.endswith("_b"))  # textual learners frozen at zero
    # Stage 2: learners, router, full LLM and projector; the vision tower still bit-identical.
    assert _same(s2["vision_tower"], base["vision_tower"])
    assert not _same(s2["language_model"], s1["language_model"]) and not _same(s2["projector"], s1["projector"])
    v2, t2, r2 = (_learners(stages["stage2"], k) for k in ("visual", "textual", "router"))
    assert not _same(v2, v1) and not _same(r2, r1)
    assert any(v.abs().sum() > 0 for k, v in t2.items() if k.endswith("_b"))
    for stage, routed in (("stage1", False), ("stage2", True)):
        meta = json.loads((stages[stage] / "wings_config.json").read_text())
        assert meta["use_router"] is routed and meta["config"]["rank"] == 8 and meta["layers"] == [0, 1]
        # Wings as published: the attention router (on eager attention), the textual learner without the
        # system prompt of the template the rows were rendered with, images padded (the recipes say so).
        assert meta["config"]["router"] == "attention" and meta["system_prompt"]["ids"]
        assert "attn_implementation: eager" in (stages[stage] / "recipe.yaml").read_text()
        losses = _losses(stages[stage])
        assert len(losses) == STEPS and sum(losses[-2:]) < sum(losses[:2]), losses
        results = json.loads((stages[stage] / "train_results.json").read_text())
        assert (
            results["parameters"]["wings"]["trainable"] > 0 and results["parameters"]["vision_tower"]["trainable"] == 0
        )
        assert results["image_aspect_ratio"] == "pad"
        card = (stages[stage] / "README.md").read_text()
        assert "`image_aspect_ratio: pad`" in card
        assert f"Wings stage {stage[-1]}" in card and "wings.safetensors" in card
        assert (stages[stage] / "mixture_manifest.json").is_file() and (stages[stage] / "recipe.yaml").is_file()
    # Stage 1 trains on image rows only (text-only rows give its parameters no gradient).
    assert json.loads((stages["stage1"] / "train_results.json").read_text())["rows"]["language"] == 0
    assert json.loads((stages["stage2"] / "train_results.json").read_text())["rows"]["language"] == 16


def test_reload_exactly_and_load_model(stages):
    from mlan.models import load_model
    from mlan.wings import get_runtime, load_wings_model, wings_state_dict

    model, processor = load_wings_model(stages["stage2"])
    saved = load_file(str(stages["stage2"] / "wings.safetensors"))
    assert _same(wings_state_dict(model), saved) and get_runtime(model).use_router
    base = {k: v for k, v in model.state_dict().items() if ".wings." not in k}
    loaded = load_model(stages["stage2"], device="cpu")
    assert get_runtime(loaded.model) is not None and loaded.multimodal
    assert _same(wings_state_dict(loaded.model), saved)
    assert _same({k: v for k, v in loaded.model.state_dict().items() if ".wings." not in k}, base)
    inputs = processor(text=["USER: Is ice cold? ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded.model(**inputs).logits)
    from mlan.errors import MlanError

    with pytest.raises(MlanError, match="a Wings model has no text-only form"):
        load_model(stages["stage2"], device="cpu", text_only=True)


def test_eval_opens_the_wings_folder(cli, stages, tmp_path):
    r = cli("eval", stages["stage2"], "--suite", "quickstart", "--limit", "2", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "ev" / "stage2" / "results.json").read_text())
    assert {x["task"] for x in data["results"]} == {"boolq", "openbookqa", "commonsense_qa", "arc_easy"}
    assert all(x["n"] == 2 for x in data["results"])


def test_eval_lm_eval_task_on_wings(cli, stages, eval_data, tmp_path):
    """lm-eval tasks run the whole Wings LLaVA as the causal LM (its learners need the LLaVA forward)."""
    args = ["eval", stages["stage2"], "--tasks", "arc_easy", "--limit", "2", "--data-dir", eval_data]
    r = cli(*args, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "ev" / "stage2" / "results.json").read_text())["results"]
    assert row["task"] == "arc_easy" and row["n"] == 2 and row["engine"] == "lm_eval"


def test_merge_carries_the_learners_over(cli, stages, tmp_path):
    from mlan.models import save_language_model
    from mlan.wings import load_wings_model, wings_state_dict

    llm = save_language_model(stages["base"], tmp_path / "llm")
    out = tmp_path / "merged"
    r = cli("merge", "--multimodal", stages["stage2"], "--original", llm, "--alpha", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    for name in ("wings.safetensors", "wings_config.json"):
        assert (out / name).read_bytes() == (stages["stage2"] / name).read_bytes()
    model, _ = load_wings_model(out)
    assert _same(wings_state_dict(model), load_file(str(stages["stage2"] / "wings.safetensors")))
    merged = load_file(str(out / "model.safetensors"))
    trained = load_file(str(stages["stage2"] / "model.safetensors"))
    assert not _same(_parts(merged)["language_model"], _parts(trained)["language_model"])
    assert _same(_parts(merged)["vision_tower"], _parts(trained)["vision_tower"])


def test_resume_restores_the_learners(cli, stages, mixture, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mlan.config.wings import WingsConfig
    from mlan.train.trainer import MlanSFTTrainer
    from mlan.wings import add_wings, wings_state_dict

    ckpt = stages["stage2"] / "checkpoints" / "checkpoint-4"
    assert (ckpt / "wings.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
    # The optimizer trained each Wings group at its own rate (recipes/wings_tiny.yaml), under one scheduler.
    groups = torch.load(ckpt / "optimizer.pt", weights_only=False)["param_groups"]
    rates = {g["name"]: g["initial_lr"] for g in groups}
    assert rates == {"language_model": 1e-3, "language_model_no_decay": 1e-3, "projector": 1e-3,
                     "projector_no_decay": 1e-3, "learners": 3e-3, "router": 3e-3, "router_no_decay": 3e-3}, rates  # fmt: skip
    # The Trainer's resume hook on a model with fresh learners brings back the checkpoint's learners and base.
    base = LlavaForConditionalGeneration.from_pretrained(stages["base"], attn_implementation="eager")
    model = add_wings(base, WingsConfig(rank=8))
    trainer = types.SimpleNamespace(is_fsdp_enabled=False, is_deepspeed_enabled=False, model=model)
    MlanSFTTrainer._load_from_checkpoint(trainer, str(ckpt))
    assert _same(wings_state_dict(model), load_file(str(ckpt / "wings.safetensors")))
    reference = LlavaForConditionalGeneration.from_pretrained(ckpt).state_dict()
    assert _same({k: v for k, v in model.state_dict().items() if ".wings." not in k}, reference)
    # And a real `mlan sft --resume` from that checkpoint finishes.
    out = tmp_path / "resumed"
    (tmp_path / "resumed.checkpoints").mkdir()
    shutil.copytree(ckpt, tmp_path / "resumed.checkpoints" / "checkpoint-4")
    # The kept checkpoints carry their run's record: the resumption is checked against it.
    shutil.copy(ckpt.parent / "run_record.json", tmp_path / "resumed.checkpoints")
    r = cli(*_args("wings_tiny", stages["stage1"], mixture, out, "-o", "training.save_steps=4", "--resume"))
    assert r.exit_code == 0, r.output
    results = json.loads((out / "train_results.json").read_text())
    assert results["resumed_from"].endswith("checkpoint-4") and results["steps"] == STEPS
    steps = [p["step"] for p in json.loads((out / "loss_log.json").read_text())["train"]]
    assert steps == list(range(1, STEPS + 1))  # steps 1-4 from the checkpoint's history, 5-8 trained here
    # Continued with the checkpoint's learners: the same losses as the uninterrupted stage-2 run.
    assert _losses(out)[4:] == pytest.approx(_losses(stages["stage2"])[4:], rel=1e-4)


def _llama_copy(model_dir: Path, tmp_path: Path) -> Path:
    """The model with its config saying model_type llama."""
    model = shutil.copytree(model_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    return model


# case -> (folders, tmp_path -> (model, mixture, more arguments), the message); folders: the models of
# `stages` (base, stage1) and the mixtures (mixture, text_mixture)
BAD_WINGS = {
    "not llava": (lambda f, t: (_llama_copy(f["base"], t), f["mixture"], []), "is not LLaVA-style"),
    "layer out of range": (
        lambda f, t: (f["base"], f["mixture"], ["-o", "wings.layers=[0,5]"]),
        "wings.layers: layer index 5 is out of range (the language model has 2 layers: 0-1)",
    ),
    "router kernel": (
        lambda f, t: (f["base"], f["mixture"], ["-o", "model.attn_implementation=sdpa"]),
        "wings.router: 'attention' needs eager attention, but model.attn_implementation is 'sdpa'",
    ),
    "lora": (
        lambda f, t: (f["base"], f["mixture"], ["-o", "train.language_model=lora"]),
        "wings: train.language_model lora is not supported with Wings",
    ),
    "learning rate": (
        lambda f, t: (f["base"], f["mixture"], ["-o", "training.learning_rate=0.1"]),
        "wings: set the per-group rates in wings.stage1 instead of training.learning_rate",
    ),
    "stage1 rank": (
        lambda f, t: (f["stage1"], f["mixture"], ["-o", "wings.rank=16"]),
        "wings.rank: 16, but the Wings model at model.path",
    ),
    "packing": (
        lambda f, t: (f["base"], f["mixture"], ["-o", "training.packing=in_batch"]),
        "training.packing in_batch: not supported with Wings (its learners attend across the whole row",
    ),
    "text only stage1": (
        lambda f, t: (f["base"], f["text_mixture"], []),
        "Wings stage 1 trains on image rows, and this mixture has none",
    ),
}


@pytest.mark.parametrize("case", list(BAD_WINGS))
def test_wings_bad_input(cli, one_line_error, mixture, text_mixture, stages, tmp_path, case):
    """Each mistake: one line, exit 2, before training (no checkpoints, no output)."""
    make, message = BAD_WINGS[case]
    model, mix, extra = make({**stages, "mixture": mixture, "text_mixture": text_mixture}, tmp_path)
    out = tmp_path / "out"
    # Stage 1 may log its Wings setup (on stderr) before the check that fails.
    assert message in one_line_error(cli(*_args("wings_tiny_stage1", model, mix, out, *extra)), stdout_ok=True)
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists()


def test_two_cpu_processes_stage2(tiny_llava_dir, mixture, tmp_path):
    """Stage 2 under `accelerate launch` with 2 CPU processes (DDP over gloo): text-only batches leave the
    visual learners unused, which DDP accepts (find_unused_parameters); both copies end equal."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    recipe = {
        "model": {"path": str(tiny_llava_dir)},
        "data": {"mixture": str(mixture), "eval_at_end": False},
        "wings": {"stage": 2, "rank": 8},
        "training": {"max_steps": 6, "per_device_train_batch_size": 4, "global_batch_size": 8, "max_length": 512},
        "output": {"dir": str(out)},
    }
    recipe["training"] |= {"precision": "fp32", "logging_steps": 1, "save_steps": 100}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[1]
    cmd = [
        str(Path(sys.executable).parent / "accelerate"), "launch",
        "--config_file", str(repo / "recipes" / "accelerate" / "cpu_ddp.yaml"), "--main_process_port", str(port),
        "-m", "mlan", "-q", "sft", str(tmp_path / "r.yaml"),
    ]  # fmt: skip
    p = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    res = json.loads((out / "train_results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 6
    assert len(res["rank_checksums"]) == 2 and res["rank_checksums"][0] == res["rank_checksums"][1]
    assert (out / "wings.safetensors").is_file() and json.loads((out / "wings_config.json").read_text())["use_router"]
