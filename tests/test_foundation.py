"""The foundation: config loading and its one-line errors, atomic outputs, the tiny offline
LLaVA, shipped-config lookup and a CLI that imports nothing heavy for --help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import Field

from mlan.config.base import StrictModel, apply_overrides, load_config
from mlan.errors import MlanError
from mlan.io import atomic_dir, atomic_write_json


class _Training(StrictModel):
    learning_rate: float = 2e-5
    """Peak learning rate."""
    epochs: int = Field(1, ge=1)
    """Passes over the data."""


class _Recipe(StrictModel):
    name: str
    """Run name."""
    training: _Training = _Training()
    """Optimisation settings."""
    layers: list[_Training] = Field(default_factory=list)
    """A list of sections, to check paths through lists."""


def _write(tmp_path, text: str):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    return f


def test_unknown_key_suggests_closest(tmp_path):
    f = _write(tmp_path, "name: x\ntraining:\n  learnin_rate: 1e-4\n")
    with pytest.raises(MlanError) as e:
        load_config(f, _Recipe)
    assert str(e.value) == f"{f}: training.learnin_rate: unknown field (did you mean 'learning_rate'?)"


def test_unknown_key_inside_list_item(tmp_path):
    f = _write(tmp_path, "name: x\nlayers:\n  - epochs: 2\n  - epoch: 3\n")
    with pytest.raises(MlanError, match=r"layers\.1\.epoch: unknown field \(did you mean 'epochs'\?\)"):
        load_config(f, _Recipe)


def test_wrong_type_and_range_and_missing(tmp_path):
    with pytest.raises(MlanError, match=r"training\.learning_rate: input should be a valid number.*\(got 'fast'\)"):
        load_config(_write(tmp_path, "name: x\ntraining: {learning_rate: fast}\n"), _Recipe)
    with pytest.raises(MlanError, match=r"training\.epochs: input should be greater than or equal to 1 \(got 0\)"):
        load_config(_write(tmp_path, "name: x\ntraining: {epochs: 0}\n"), _Recipe)
    with pytest.raises(MlanError, match=r"r\.yaml: name: required field is missing"):
        load_config(_write(tmp_path, "training: {}\n"), _Recipe)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MlanError, match=r"nope\.yaml: file not found"):
        load_config(tmp_path / "nope.yaml", _Recipe)
    with pytest.raises(MlanError, match=r"r\.yaml: line 2, column \d+: invalid YAML"):
        load_config(_write(tmp_path, "name: x\ntraining: {a: [1, 2}\n"), _Recipe)
    with pytest.raises(MlanError, match="expected a mapping of fields at the top level, got list"):
        load_config(_write(tmp_path, "- 1\n- 2\n"), _Recipe)


def test_overrides_set_nested_fields_and_list_items(tmp_path):
    f = _write(tmp_path, "name: x\nlayers:\n  - epochs: 2\n")
    cfg = load_config(f, _Recipe, ["training.learning_rate=1e-5", "layers.0.epochs=4", "name=y"])
    assert cfg.training.learning_rate == 1e-5 and cfg.layers[0].epochs == 4 and cfg.name == "y"
    with pytest.raises(MlanError, match="expected FIELD\\.PATH=VALUE"):
        apply_overrides({}, ["training.learning_rate"])
    with pytest.raises(MlanError, match=r"layers\.3: no such list item"):
        load_config(f, _Recipe, ["layers.3.epochs=1"])
    with pytest.raises(
        MlanError,
        match=r"training\.learning_rat: unknown field \(did you mean 'learning_rate'\?\) \(from -o training\.learning_rat=1\)",
    ):
        load_config(f, _Recipe, ["training.learning_rat=1"])
    with pytest.raises(MlanError, match=r"training\.lr: unknown field \(valid: learning_rate, epochs\)"):
        load_config(f, _Recipe, ["training.lr=1"])


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "a.json", {"b": 1, "a": 2})
    assert (out / "a.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(MlanError, match="output already exists"), atomic_dir(out):
        pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_help_lists_commands_and_imports_nothing_heavy(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("build-mixture", "sft", "eval", "merge", "quickstart", "tiny-model", "validate"):
        assert command in result.output
    code = "import sys, mlan.cli; print(sorted(m for m in ('torch', 'transformers', 'datasets', 'trl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tiny_model_round_trips_and_generates(cli, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from mlan.paths import BUNDLED_DATA_DIR
    from mlan.tiny import build_tiny_llava

    out = tmp_path / "tiny"
    result = cli("tiny-model", out, "--seed", "3")
    assert result.exit_code == 0, result.output
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, LlavaProcessor)
    ref_model, ref_processor = build_tiny_llava("tiny", seed=3)
    ref = ref_model.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == ref.keys()
    assert all(torch.equal(loaded[k], ref[k]) for k in ref)
    assert processor.tokenizer.get_vocab() == ref_processor.tokenizer.get_vocab()
    assert processor.chat_template == ref_processor.chat_template

    image = Image.open(BUNDLED_DATA_DIR / "images" / "skimage_rocket.jpg")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.endswith(" USER: <image>\nWhat is shown? ASSISTANT:")
    enc = processor(text=prompt, images=[image], return_tensors="pt")
    n_image_tokens = int((enc["input_ids"] == model.config.image_token_index).sum())
    assert n_image_tokens == (32 // 8) ** 2
    with torch.no_grad():
        with_image = model.generate(**enc, max_new_tokens=4, do_sample=False)
        text = processor(text="USER: Hello ASSISTANT:", return_tensors="pt")
        text_only = model.generate(**text, max_new_tokens=4, do_sample=False)
    assert with_image.shape[1] == enc["input_ids"].shape[1] + 4
    assert text_only.shape[1] == text["input_ids"].shape[1] + 4


def test_chat_template_marks_only_the_assistant_reply(tiny_llava_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Is snow cold?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]
    enc = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"][0], enc["assistant_masks"][0]
    assert ids.count(processor.tokenizer.bos_token_id) == 1
    assert processor.tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == " yes</s>"


def test_tiny_model_bad_size(cli, one_line_error, tmp_path):
    msg = one_line_error(cli("tiny-model", tmp_path / "m", "--size", "huge"))
    assert "--size 'huge': expected one of tiny, small, lab, base" in msg
    assert not (tmp_path / "m").exists()


def test_shipped_configs_resolve_by_name():
    from mlan.paths import resolve_config, shipped_dir

    for kind in ("recipes", "data_mixtures", "evaluations"):
        files = sorted(shipped_dir(kind).glob("*.yaml"))
        assert files, f"no shipped {kind}"
        f = files[0]
        assert resolve_config(f"{kind}/{f.name}", kind) == f
        assert resolve_config(f.stem, kind) == f
    with pytest.raises(MlanError, match=r"recipes/nope\.yaml: file not found \(shipped recipes: "):
        resolve_config("recipes/nope.yaml", "recipes")


def test_every_shipped_config_validates(cli):
    from mlan.config.shipped import validate_shipped
    from mlan.paths import shipped_files

    loaded = validate_shipped()
    for kind in ("recipes", "data_mixtures", "evaluations"):
        assert all(f in loaded for f in shipped_files(kind))
    result = cli("validate")
    assert result.exit_code == 0 and f"{len(loaded)} shipped config files are valid" in result.output


def test_ruff_clean():
    from pathlib import Path

    ruff = Path(sys.executable).parent / "ruff"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([str(ruff), "check", "--no-cache", str(repo)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_errors_through_the_cli(cli, one_line_error, tmp_path):
    from mlan.paths import shipped_dir

    recipe = tmp_path / "recipe.yaml"
    text = (shipped_dir("recipes") / "tiny.yaml").read_text()

    recipe.write_text(text.replace("  learning_rate:", "  learnin_rate:"))
    msg = one_line_error(cli("sft", recipe))
    assert msg == f"error: {recipe}: training.learnin_rate: unknown field (did you mean 'learning_rate'?)"

    recipe.write_text(text.replace("  per_device_train_batch_size: 8", "  per_device_train_batch_size: eight"))
    msg = one_line_error(cli("validate", "--kind", "recipe", recipe))
    assert msg == (
        f"error: {recipe}: training.per_device_train_batch_size: input should be a valid integer, "
        "unable to parse string as an integer (got 'eight')"
    )

    msg = one_line_error(cli("build-mixture", tmp_path / "missing.yaml"))
    assert msg.startswith(f"error: {tmp_path / 'missing.yaml'}: file not found (shipped data_mixtures: ")

    recipe.write_text(text)
    msg = one_line_error(cli("sft", recipe, "-o", "training.warmup_ratio=2"))
    assert msg == (
        f"error: {recipe}: training.warmup_ratio: input should be less than 1 (got 2) (from -o training.warmup_ratio=2)"
    )
    assert not (tmp_path / "runs").exists()
