"""One home for model kinds (mlan.kinds): detection, the one local-or-hub rule, and LLaVA-NeXT folders
through eval (vision, with `image_sizes`) and merge, refused by sft with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mlan import kinds
from mlan.errors import MlanError
from tests.llava_next import save_tiny_llava_next

ORIGINAL_CONFIG = {  # the fields that tell liuhaotian/llava-v1.5-7b's config.json apart (llava_formats/)
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava",
    "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "mm_projector_type": "mlp2x_gelu",
    "hidden_size": 4096,
}


@pytest.fixture(scope="module")
def llava_next_dir(tmp_path_factory) -> Path:
    return save_tiny_llava_next(tmp_path_factory.mktemp("next") / "tiny-llava-next")


@pytest.mark.parametrize(
    "config, folder_files, kind",
    [
        ({"model_type": "llava", "text_config": {}, "vision_config": {}}, [], kinds.LLAVA),
        ({"model_type": "llava", "text_config": {}, "vision_config": {}}, ["wings_config.json"], kinds.WINGS),
        ({"model_type": "llava_next", "text_config": {}, "vision_config": {}}, [], kinds.LLAVA_NEXT),
        (ORIGINAL_CONFIG, [], kinds.ORIGINAL_LLAVA),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, [], kinds.CAUSAL_LM),
    ],
)
def test_kind_of(config, folder_files, kind, tmp_path):
    for f in folder_files:
        (tmp_path / f).write_text("{}")
    assert kinds.kind_of(config, tmp_path) == kind
    assert kinds.is_llava_config(config) == (kind in kinds.MULTIMODAL_KINDS)


def test_local_folder_rule(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert kinds.local_folder(tmp_path) == tmp_path
    assert kinds.local_folder("org/name") is None  # a hub id
    for ref, message in [
        (tmp_path / "f.txt", "expected a model folder, got a file"),
        ("./missing", "model folder not found"),
        ("a/b/c", "model folder not found"),
        ("bare-name", "model folder not found"),
    ]:
        with pytest.raises(MlanError, match=message):
            kinds.local_folder(ref)


def test_legacy_names_map_to_current():
    assert kinds.current_name("language_model.model.layers.0.mlp.up_proj.weight") == (
        "model.language_model.layers.0.mlp.up_proj.weight"
    )
    assert kinds.current_name("language_model.lm_head.weight") == "lm_head.weight"
    assert kinds.current_name("image_newline") == "model.image_newline"
    assert kinds.current_name("model.vision_tower.x") == "model.vision_tower.x"  # already current


def test_llava_next_loads_as_llava_next(llava_next_dir):
    from mlan.models import load_model

    assert kinds.model_kind(llava_next_dir) == kinds.LLAVA_NEXT
    loaded = load_model(llava_next_dir, device="cpu")
    assert type(loaded.model).__name__ == "LlavaNextForConditionalGeneration" and loaded.multimodal
    assert loaded.model.model.image_newline.shape == (loaded.model.config.text_config.hidden_size,)
    text = load_model(llava_next_dir, device="cpu", text_only=True)
    assert type(text.model).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
def test_llava_next_vision_eval_and_merge(cli, llava_next_dir, eval_data, tmp_path):
    """`mlan eval` runs the unseen vision suite on a LLaVA-NeXT folder (anyres tiles, image_sizes); `mlan merge`
    merges the original LLM into it and keeps `image_newline` and the vision weights unchanged."""
    out = tmp_path / "eval"
    r = cli(
        "eval", llava_next_dir, "--suite", "unseen_vision", "--limit", "2", "--data-dir", eval_data,
        "--image-dir", eval_data / "images", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "tiny-llava-next" / "results.json").read_text())["results"]
    assert {x["task"] for x in rows} == {"realworldqa", "ai2d", "pope", "gqa", "scienceqa"}
    assert all(x["n"] == 2 for x in rows)

    from mlan.models import save_language_model

    llm = save_language_model(llava_next_dir, tmp_path / "llm")
    merged = tmp_path / "merged"
    r = cli(
        "merge",
        "--multimodal",
        llava_next_dir,
        "--original",
        llm,
        "--method",
        "linear",
        "--alpha",
        "1",
        "--out",
        merged,
    )
    assert r.exit_code == 0, r.output
    from safetensors.torch import load_file

    before, after = load_file(str(llava_next_dir / "model.safetensors")), load_file(str(merged / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the LLM merged in is the model's own
    assert any("image_newline" in k for k in after)


def test_sft_refuses_llava_next_and_original_layout(cli, one_line_error, llava_next_dir, tmp_path):
    original = tmp_path / "original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps(ORIGINAL_CONFIG))
    for model, message in [(llava_next_dir, "a llava_next model; mlan sft trains"), (original, "mlan convert")]:
        r = cli("sft", "tiny", "-o", f"model.path={model}", "-o", f"output.dir={tmp_path / 'out'}")
        assert message in one_line_error(r)
        assert not (tmp_path / "out").exists()


def test_every_stage_names_the_converter_for_an_original_checkpoint(cli, one_line_error, tiny_llava_dir, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(tiny_llava_dir, original)
    (original / "config.json").write_text(json.dumps(ORIGINAL_CONFIG))
    for args in (
        ["eval", original, "--suite", "unseen_vision", "--limit", "1"],
        ["merge", "--multimodal", original, "--original", tiny_llava_dir, "--out", tmp_path / "m"],
    ):
        assert "mlan convert" in one_line_error(cli(*args))
