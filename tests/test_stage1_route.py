"""The route from public parts to a tuned model, on tiny models and real LLaVA JSON rows:
`mlan assemble` -> stage 1 (`recipes/stage1_vicuna.yaml`: projector only, LCS-558K rows, LLaVA's plain
format) -> stage 2 (`recipes/vicuna.yaml`, which reads stage 1's output) -> eval; and the plain format
itself, token by token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.originals import save_clip_tower, save_llm
from tests.test_llava_data import LCS, MIX665K, MLAN_TEXT, write_source

# The shipped 7B recipes, shrunk to a CPU and a few steps; everything else (learning rate, what is
# trained, the template) is the recipe's own.
CPU = ["training.precision=fp32", "model.dtype=float32", "training.gradient_checkpointing=false"]
CPU += ["training.dataloader_num_workers=0", "training.max_steps=3", "training.per_device_train_batch_size=2"]
CPU += ["training.global_batch_size=2", "training.max_length=512"]


def _overrides(*fields: str) -> list[str]:
    return [x for f in (*CPU, *fields) for x in ("-o", f)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _changed(before: dict, after: dict, part: str) -> bool:
    keys = [k for k in before if part in k]
    assert keys, part
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_plain_template_is_llavas_stage1_format():
    """`training.chat_template: plain` renders BOS, the image, the caption and "\\n"; only the caption and
    the newline are learned (haotian-liu/LLaVA llava/train/train.py preprocess_plain)."""
    from mlan.tiny import build_tokenizer
    from mlan.train.preflight import PLAIN_TEMPLATE

    tok = build_tokenizer()
    caption = LCS[0]["conversations"][1]["value"]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image briefly."}]},
        {"role": "assistant", "content": [{"type": "text", "text": caption}]},
    ]
    text = tok.apply_chat_template(messages, chat_template=PLAIN_TEMPLATE, tokenize=False)
    assert text == f"{tok.bos_token}<image>{caption}\n"
    enc = tok.apply_chat_template(
        messages, chat_template=PLAIN_TEMPLATE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    learned = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(learned) == tok.decode(tok(f"{caption}\n", add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_assemble_stage1_stage2_eval(cli, eval_data, tmp_path):
    llm, tower = save_llm(tmp_path / "llm"), save_clip_tower(tmp_path / "tower")
    assembled = tmp_path / "assembled"
    r = cli("assemble", "--llm", llm, "--vision-tower", tower, "--out", assembled)
    assert r.exit_code == 0, r.output

    # Stage 1 on the real LCS-558K rows: only the projector learns; the model keeps the Vicuna-v1 template.
    lcs = tmp_path / "lcs"
    lcs.mkdir()
    r = cli("-q", "build-mixture", write_source(lcs, LCS), "--out", tmp_path / "mix-lcs")
    assert r.exit_code == 0, r.output
    stage1 = tmp_path / "stage1"
    args = _overrides(f"model.path={assembled}", f"data.mixture={tmp_path / 'mix-lcs'}", f"output.dir={stage1}")
    r = cli("sft", "recipes/stage1_vicuna.yaml", *args)
    assert r.exit_code == 0, r.output
    before, after = _weights(assembled), _weights(stage1)
    assert _changed(before, after, "multi_modal_projector")
    assert not _changed(before, after, "language_model") and not _changed(before, after, "vision_tower")
    assert json.loads((stage1 / "train_results.json").read_text())["chat_template"] == "plain"
    assert (stage1 / "chat_template.jinja").read_text() == (assembled / "chat_template.jinja").read_text()

    # Stage 2 (MLAN's recipe) on LLaVA-665K image rows and MLAN-style text rows, from stage 1's output.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    r = cli("-q", "build-mixture", write_source(mixed, [*MIX665K, *MLAN_TEXT]), "--out", tmp_path / "mix-2")
    assert r.exit_code == 0, r.output
    stage2 = tmp_path / "stage2"
    args = _overrides(f"model.path={stage1}", f"data.mixture={tmp_path / 'mix-2'}", f"output.dir={stage2}")
    r = cli("sft", "recipes/vicuna.yaml", *args, "-o", "data.eval_at_end=false")
    assert r.exit_code == 0, r.output
    s2 = _weights(stage2)
    assert _changed(after, s2, "language_model") and _changed(after, s2, "multi_modal_projector")
    assert not _changed(after, s2, "vision_tower")

    r = cli(*["eval", stage2, "--suite", "unseen_vision", "--tasks", "pope", "--limit", "2"],
            *["--data-dir", eval_data, "--image-dir", eval_data / "images", "--out", tmp_path / "ev"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "ev" / "stage2" / "results.json").read_text())["results"]
    assert [(x["task"], x["n"]) for x in rows] == [("pope", 2)]
