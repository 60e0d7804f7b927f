"""LLaVA-OneVision and Qwen2.5-VL (tiny models built from config, offline): recognised as their kinds, opened
without torchvision, their language model extracted with exactly the multimodal model's text logits, and
evaluated through `mlan eval` on the eight-task suite, an unseen language task and a vision task; a
Qwen2-VL folder and `mlan sft` on them are one line each."""

from __future__ import annotations

import json
import shutil

import pytest
from families import save_tiny_llava_onevision, save_tiny_qwen2_5_vl

from mlan import kinds

BUILDERS = {kinds.LLAVA_ONEVISION: save_tiny_llava_onevision, kinds.QWEN2_5_VL: save_tiny_qwen2_5_vl}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {kind: build(root / kind) for kind, build in BUILDERS.items()}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_kind_processor_and_language_model(family_dirs, kind):
    """The folder is its kind; its processor opens here (no torchvision) and expands an image into tokens;
    the extracted language model (a Qwen2ForCausalLM sharing the tensors) gives the multimodal model's
    logits on text exactly, padded batch included."""
    import torch
    from PIL import Image

    from mlan.models import extract_language_model, load_model

    folder = family_dirs[kind]
    assert kinds.model_kind(folder) == kind
    loaded = load_model(folder, device="cpu", dtype="float32")
    assert loaded.multimodal and type(loaded.model).__name__ == kinds.model_class(kind).__name__
    processor = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[Image.new("RGB", (56, 56), (200, 30, 30))], return_tensors="pt")
    image_id = loaded.model.config.image_token_id
    assert int((enc["input_ids"] == image_id).sum()) > 1  # one placeholder expanded into the image's tokens
    lm = extract_language_model(loaded.model)
    assert type(lm).__name__ == "Qwen2ForCausalLM"
    tok = loaded.tokenizer
    batch = tok(["The best answer is", "A red square, two blue circles and"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = loaded.model(**batch).logits
        got = lm(**batch).logits
    assert torch.equal(want, got)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_eval_suites_on_the_family(cli, family_dirs, eval_data, tmp_path, kind):
    """`mlan eval` on an eight-task task (lm-eval, through the language model), an unseen language task and a
    vision task (generate then match, in the family's own chat template): every task scored, the records written."""
    out = tmp_path / "ev"
    args = [
        "eval",
        family_dirs[kind],
        "--suite",
        "eight_task",
        "--suite",
        "unseen_language",
        "--suite",
        "unseen_vision",
    ]
    args += ["--tasks", "arc_easy,boolq,pope", "--limit", "3", "--data-dir", eval_data]
    args += ["--image-dir", eval_data / "images", "--out", out]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / kind / "results.json").read_text())
    assert {(x["task"], x["n"]) for x in res["results"]} == {("arc_easy", 3), ("boolq", 3), ("pope", 3)}
    samples = [json.loads(s) for s in (out / kind / "samples" / "unseen_vision__pope.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(s["image"] for s in samples)
    # The vision suite in the family's own chat template (MLAN's is Vicuna-v1), recorded; the language suite as MLAN's.
    styles = {x["task"]: x["prompt_style"] for x in res["results"]}
    assert styles == {"arc_easy": None, "boolq": None, "pope": "chat"}
    assert all(s["prompt"].startswith("<|im_start|>") and "USER:" not in s["prompt"] for s in samples)


def test_unsupported_family_and_training_are_one_line(cli, one_line_error, family_dirs, tmp_path):
    """A Qwen2-VL folder (given where a Qwen2.5-VL is expected) and `mlan sft` on the new kinds: one line each."""
    qwen2_vl = tmp_path / "qwen2-vl"
    shutil.copytree(family_dirs[kinds.QWEN2_5_VL], qwen2_vl)
    config = json.loads((qwen2_vl / "config.json").read_text())
    (qwen2_vl / "config.json").write_text(json.dumps({**config, "model_type": "qwen2_vl"}))
    line = one_line_error(cli("eval", qwen2_vl, "--suite", "quickstart"))
    assert "a Qwen2-VL model (model_type qwen2_vl); mlan takes Qwen2.5-VL (qwen2_5_vl)" in line
    for kind, folder in family_dirs.items():
        line = one_line_error(cli("sft", "tiny", "-o", f"model.path={folder}", "-o", f"output.dir={tmp_path / kind}"))
        assert f"model.path {folder}: a {kind} model; mlan sft trains LLaVA-1.5-style (llava) models" in line


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_merge_the_original_qwen2_back(cli, family_dirs, tmp_path, kind):
    """The original LLM (a Qwen2, as LLaVA-OneVision's and Qwen2.5-VL's are) merged into the right tensors:
    alpha 0 gives the multimodal model bit for bit, linear alpha 1 gives the LLM's language-model tensors bit
    for bit and keeps the vision tower; the merged folder loads as its kind."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, Qwen2ForCausalLM

    from mlan.families import causal_lm_config

    mm = family_dirs[kind]
    torch.manual_seed(7)
    llm = Qwen2ForCausalLM(causal_lm_config(kind, AutoConfig.from_pretrained(mm)))
    llm.save_pretrained(tmp_path / "llm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(mm / f, tmp_path / "llm" / f)
    mm_w, llm_w = load_file(str(mm / "model.safetensors")), load_file(str(tmp_path / "llm" / "model.safetensors"))
    for alpha in ("0", "1"):
        out = tmp_path / f"m{alpha}"
        r = cli(
            "merge",
            "--multimodal",
            mm,
            "--original",
            tmp_path / "llm",
            "--method",
            "linear",
            "--alpha",
            alpha,
            "--out",
            out,
        )
        assert r.exit_code == 0, r.output
        w = load_file(str(out / "model.safetensors"))
        assert w.keys() == mm_w.keys()
        lm_keys = [
            k
            for k in w
            if "vision_tower" not in k and "visual" not in k and "projector" not in k and "image_newline" not in k
        ]
        assert len(lm_keys) == len(llm_w) > 10
        for k in w:
            if alpha == "0" or k not in lm_keys:
                assert torch.equal(w[k], mm_w[k]), k
        if alpha == "1":
            prefix = "language_model." if kind == kinds.LLAVA_ONEVISION else ""
            assert all(torch.equal(w[prefix + k], v) for k, v in llm_w.items())
    assert kinds.model_kind(tmp_path / "m1") == kind
    kinds.model_class(kind).from_pretrained(tmp_path / "m1")
