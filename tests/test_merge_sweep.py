"""mlan merge sweeps: merge and evaluate each (alpha, density) point, report the trade-off and the best point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mlan.config.merge import MergeConfig
from mlan.errors import MlanError


@pytest.fixture(scope="module")
def pair(tiny_llava_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny LLaVA, an original LLM for it, and a one-task vision suite over real POPE rows."""
    from PIL import Image
    from transformers import LlamaForCausalLM, LlavaConfig

    root = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(11)
    llm = LlamaForCausalLM(LlavaConfig.from_pretrained(tiny_llava_dir).text_config)
    llm.save_pretrained(root / "llm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_llava_dir / f, root / "llm" / f)

    pope = Path(__file__).resolve().parents[1] / "mlan" / "assets" / "data" / "pope_coco" / "random.jsonl"
    rows = [json.loads(x) for x in pope.read_text().splitlines()[:3]]  # bundled POPE rows (MIT)
    (root / "images").mkdir()
    for name in {r["image"] for r in rows}:
        Image.new("RGB", (40, 32), (30, 120, 200)).save(root / "images" / name)
    (root / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "vision.yaml").write_text(
        "name: tiny_vision\nengine: generate\nmodality: vision\n"
        "prompt: {style: chat, answer_prefix: 'The best answer is \"'}\nmax_new_tokens: 3\nstop: ['\"']\n"
        "tasks:\n  - name: pope\n    hub: {path: lmms-lab/POPE, split: test}\n"
        f"    data_file: {root / 'pope.jsonl'}\n    image_dir: {root / 'images'}\n    metric: acc\n"
    )
    return {"mm": tiny_llava_dir, "llm": root / "llm", "vision": root / "vision.yaml"}


def test_sweep_through_cli_evaluates_language_and_vision(cli, pair, tmp_path):
    out = tmp_path / "sweep"
    r = cli(
        "merge", "--multimodal", pair["mm"], "--original", pair["llm"], "--alpha", "0,0.5",
        "--suite", "quickstart", "--suite", pair["vision"], "-o", "sweep.limit=2", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads((out / "sweep.json").read_text())
    assert [p["alpha"] for p in report["points"]] == [0.0, 0.5]
    for p in report["points"]:
        assert {"language", "vision", "mean", "tiny_vision/pope", "quickstart/boolq"} <= set(p["scores"])
        assert p["score"] == p["scores"]["mean"] and p["model_dir"] is None
    best = max(report["points"], key=lambda p: (p["score"], -p["alpha"]))
    assert report["best"]["alpha"] == best["alpha"]
    assert "mlan merge --multimodal" in report["merge_best"]
    assert (out / "sweep.png").stat().st_size > 1000 and "| alpha | density |" in (out / "sweep.md").read_text()
    assert not (out / "models").exists()  # merged folders are not kept unless asked
    assert (out / "eval" / "a0.5-d1" / "results.json").is_file()
    assert "best: alpha" in r.output


def _scripted(model_dir: Path, eval_dir: Path):
    """Scores that depend on the merged weights: language rises and vision falls with the LLM's share."""
    from mlan.merge.layout import open_checkpoint

    ckpt = open_checkpoint(model_dir, "merged")
    manifest = json.loads((model_dir / "merge_manifest.json").read_text())
    assert torch.isfinite(ckpt.files[0].read("language_model.lm_head.weight")).all()
    a = manifest["alpha"]
    return [("lang", "gsm8k", "language", 0.2 + 0.5 * a), ("vis", "pope", "vision", 0.8 - 0.6 * a * a * 4)]


def test_best_point_by_criterion_and_vision_constraint(pair, tmp_path):
    from mlan.merge.sweep import sweep_merge

    base = {"multimodal": str(pair["mm"]), "original": str(pair["llm"]), "alpha": [0, 0.1, 0.2, 0.5]}
    rep = sweep_merge(MergeConfig(**base, out=str(tmp_path / "a"), sweep={"criterion": "language"}), evaluate=_scripted)
    assert rep.best.alpha == 0.5
    rep = sweep_merge(MergeConfig(**base, out=str(tmp_path / "b"), sweep={"criterion": "mean"}), evaluate=_scripted)
    # mean = 0.5 + 0.25a - 1.2a^2 is largest at a = 0.104: the 0.1 point.
    assert rep.best.alpha == 0.1
    cfg = MergeConfig(
        **base, out=str(tmp_path / "c"), sweep={"criterion": "gsm8k", "max_vision_drop": 0.05, "keep_merged": True}
    )
    rep = sweep_merge(cfg, evaluate=_scripted)
    # vision drops 0.024 at 0.1, 0.096 at 0.2: 0.2 and 0.5 are excluded.
    assert rep.best.alpha == 0.1 and [r.eligible for r in rep.rows] == [True, True, False, False]
    assert all(Path(r.model_dir, "model.safetensors").is_file() for r in rep.rows)
    assert "(excluded)" in (tmp_path / "c" / "sweep.md").read_text()


def test_density_sweep_makes_a_grid(pair, tmp_path):
    from mlan.merge.sweep import sweep_merge

    cfg = MergeConfig(
        multimodal=str(pair["mm"]), original=str(pair["llm"]), method="ties", alpha=[0, 0.3], density=[0.2, 1.0],
        out=str(tmp_path / "g"),
    )  # fmt: skip
    rep = sweep_merge(cfg, evaluate=_scripted)
    assert [(r.alpha, r.density) for r in rep.rows] == [(0, 0.2), (0.3, 0.2), (0, 1.0), (0.3, 1.0)]
    assert (tmp_path / "g" / "sweep.png").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--alpha", "0,0.1"], "sweep: no evaluation suite (pass --suite NAME"),
        (["--alpha", "0,0.1", "--suite", "quickstart", "--criterion", "nope"], "sweep.criterion 'nope': expected"),
        (["--alpha", "0,0.1", "--suite", "quickstart", "--criterion", "vision"], "none of the suites has vision"),
        (["--alpha", "0.1,0.2", "--suite", "quickstart", "-o", "sweep.max_vision_drop=0.1"], "needs an alpha-0 point"),
        (["--alpha", "0,1.2", "--suite", "quickstart"], "alpha must be in [0, 1], got 1.2"),
        (["--alpha", "0,0.1", "--suite", "no_such_suite"], "unknown suite"),
    ],
)
def test_bad_sweep_input(cli, one_line_error, pair, tmp_path, args, expected):
    r = cli("merge", "--multimodal", pair["mm"], "--original", pair["llm"], "--out", tmp_path / "s", *args)
    assert expected in one_line_error(r)
    assert not (tmp_path / "s").exists()


def test_single_merge_refuses_a_sweep_config(pair, tmp_path):
    from mlan.merge import merge_models

    with pytest.raises(MlanError, match="lists make a sweep"):
        merge_models(MergeConfig(multimodal=str(pair["mm"]), original=str(pair["llm"]), alpha=[0, 1]))


def test_merge_config_from_python_as_the_cli_builds_it(tmp_path):
    """The YAML + options + overrides logic of `mlan merge` is a library function."""
    from mlan.merge import merge_config

    spec = tmp_path / "merge.yaml"
    spec.write_text("multimodal: mm\noriginal: llm\nalpha: 0.3\nsweep: {criterion: language}\n")
    cfg = merge_config(spec, {"alpha": [0, 0.1], "suites": ["quickstart"], "method": None}, ["seed=7"])
    assert cfg.is_sweep and cfg.alphas == [0, 0.1] and cfg.seed == 7 and cfg.method == "task_arithmetic"
    assert cfg.sweep.suites == ["quickstart"] and cfg.sweep.criterion == "language"
    with pytest.raises(MlanError, match=r"^merge options: original: required \(pass --original\)$"):
        merge_config(None, {"multimodal": "mm"})
    with pytest.raises(MlanError, match=r"merge.yaml: alpha: value error, alpha must be in \[0, 1\], got 2.0"):
        merge_config(spec, {"alpha": [2.0]})
