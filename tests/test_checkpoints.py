"""`mlan convert` and `mlan assemble`: original-layout LLaVA checkpoints and released parts (LLM, CLIP
tower, stage-1 mm_projector.bin) become Hugging Face LLaVA folders that load with no missing or
unexpected key, share every tensor bit for bit with their sources and run in every later stage.

The inputs are tiny copies of the real layouts built by tests/originals.py (field and key names of
liuhaotian/llava-v1.5-7b); nothing is read from outside the repository and nothing reaches a hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from originals import (
    IMAGE_TOKENS,
    TEXT_DIMS,
    VISION_DIMS,
    VOCAB,
    load_llava,
    original_config,
    original_tensors,
    save_clip_tower,
    save_llm,
    save_mm_projector,
    save_original_llava,
    saved_tensors,
    tower_state,
)

from mlan.tiny import vicuna_chat_template

ROWS = 2048  # VOCAB + <image> + <pad>, padded to a multiple of 64


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    """Tiny released parts and an original checkpoint, and that checkpoint converted once (read-only)."""
    from mlan.checkpoints import convert

    root = tmp_path_factory.mktemp("checkpoints")
    p = {"tower": save_clip_tower(root / "clip"), "clip_full": save_clip_tower(root / "clip-full", full_clip=True)}
    p["llm"] = save_llm(root / "vicuna-tiny", seed=1)
    p["original"] = save_original_llava(root / "llava-v1.5-tiny", p["tower"], seed=0)
    p["projector"] = save_mm_projector(root / "stage1" / "mm_projector.bin", seed=3)
    p["converted"] = root / "converted"
    convert(p["original"], p["converted"])
    return p


# ------------------------------------------------------------------------------------- key map, kinds


def test_key_map_follows_transformers_table():
    """Real keys of liuhaotian/llava-v1.5-7b through KEYS_TO_MODIFY_MAPPING give the llava-hf names of
    converter_tables/DERIVED_liuhaotian_to_llava-hf_keymap.json, then transformers 5's names."""
    from mlan.checkpoints.original import hf_name, legacy_name

    pairs = {
        "model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
        "model.layers.31.self_attn.q_proj.weight": "language_model.model.layers.31.self_attn.q_proj.weight",
        "model.norm.weight": "language_model.model.norm.weight",
        "lm_head.weight": "language_model.lm_head.weight",
        "model.mm_projector.0.weight": "multi_modal_projector.linear_1.weight",
        "model.mm_projector.2.bias": "multi_modal_projector.linear_2.bias",
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": (
            "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
        ),
    }
    for key, legacy in pairs.items():
        assert legacy_name(key) == legacy, key
    assert legacy_name("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    assert hf_name("model.layers.0.mlp.up_proj.weight") == "model.language_model.layers.0.mlp.up_proj.weight"
    assert hf_name("lm_head.weight") == "lm_head.weight"
    assert hf_name("model.mm_projector.2.weight") == "model.multi_modal_projector.linear_2.weight"
    vision = "model.vision_tower.vision_tower.vision_model.post_layernorm.weight"
    assert hf_name(vision) == "model.vision_tower.vision_model.post_layernorm.weight"
    assert hf_name(vision, {"model.vision_tower.post_layernorm.weight"}) == "model.vision_tower.post_layernorm.weight"


def test_original_layout_is_recognised(tiny_llava_dir):
    from mlan.checkpoints import is_original_llava_config

    assert is_original_llava_config(original_config("openai/clip-vit-large-patch14-336"))
    assert not is_original_llava_config(json.loads((tiny_llava_dir / "config.json").read_text()))
    assert not is_original_llava_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})


# --------------------------------------------------------------------------------------------- convert


def test_convert_copies_every_shared_tensor_bit_for_bit(parts):
    from mlan.checkpoints.original import hf_name

    orig = original_tensors(seed=0)
    model = load_llava(parts["converted"])
    state = model.state_dict()
    assert model.dtype == torch.float16  # kept, as the checkpoint's
    vocab_keys = {"model.embed_tokens.weight", "lm_head.weight"}
    compared = 0
    for key, t in orig.items():
        name = hf_name(key, set(state))
        if name is None:
            assert key.endswith(".inv_freq")
            continue
        got = state[name]
        if key in vocab_keys:
            assert got.shape == (ROWS, TEXT_DIMS["hidden_size"])
            assert torch.equal(got[:VOCAB], t), key
            mean = t.float().mean(0).to(t.dtype)
            assert all(torch.equal(row, mean) for row in got[VOCAB:]), key
        else:
            assert torch.equal(got, t), key
        compared += 1
    assert compared == len(orig) - TEXT_DIMS["num_hidden_layers"]  # all but the inv_freq buffers
    tower = tower_state(parts["tower"])
    for k, t in tower.items():
        assert torch.equal(state["model.vision_tower." + k], t.half()), k
    assert len(state) == compared + len(tower)


def test_converted_config_processor_and_card(parts):
    from transformers import AutoProcessor, AutoTokenizer, LlavaConfig

    out = parts["converted"]
    config = LlavaConfig.from_pretrained(out)
    assert (config.image_token_index, config.pad_token_id, config.text_config.vocab_size) == (VOCAB, VOCAB + 1, ROWS)
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.projector_hidden_act == "gelu" and config.image_seq_length == IMAGE_TOKENS
    assert config.vision_config.hidden_size == VISION_DIMS["hidden_size"]
    assert config.image_aspect_ratio == "pad"  # the original's flag, read by evaluation's `image_aspect_ratio: model`
    processor = AutoProcessor.from_pretrained(out)
    tok = processor.tokenizer
    assert (tok.pad_token, tok.padding_side, tok.convert_tokens_to_ids("<image>")) == ("<pad>", "left", VOCAB)
    assert processor.chat_template == vicuna_chat_template() and "{% generation %}" in processor.chat_template
    # Plain text tokenizes exactly as with the checkpoint's own sentencepiece tokenizer.
    original = AutoTokenizer.from_pretrained(parts["original"])
    text = "A chat between a curious user and an assistant. USER: What is in the picture? ASSISTANT: A cat."
    assert tok(text).input_ids == original(text).input_ids
    from PIL import Image

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt.startswith("A chat between") and prompt.endswith("USER: <image>\nWhat is this? ASSISTANT:")
    batch = processor(images=Image.new("RGB", (40, 30), "red"), text=prompt, return_tensors="pt")
    assert int((batch["input_ids"] == VOCAB).sum()) == IMAGE_TOKENS
    card = (out / "README.md").read_text()
    assert str(parts["original"]) in card and str(parts["tower"]) in card and "mm_projector" in card
    assert "-2 (strategy 'default')" in card


def test_converted_model_generates(parts):
    from PIL import Image
    from transformers import AutoProcessor

    model = load_llava(parts["converted"]).float().eval()
    processor = AutoProcessor.from_pretrained(parts["converted"])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    batch = processor(images=Image.new("RGB", (32, 32), "blue"), text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3


@pytest.mark.parametrize(("fmt", "tokenizer"), [("safetensors", "json"), ("single", "sentencepiece")])
def test_every_weight_format_converts_the_same(parts, tmp_path, fmt, tokenizer):
    """The hub's safetensors variant (with a tokenizer.json) and a single pytorch_model.bin give the
    same tensors as the sharded release; --dtype fp32 widens the checkpoint's tensors exactly and
    takes the tower's as released."""
    from mlan.checkpoints import convert

    src = save_original_llava(tmp_path / "orig", parts["tower"], seed=0, fmt=fmt, tokenizer=tokenizer)
    convert(src, tmp_path / "out")
    ref = saved_tensors(parts["converted"])
    got = saved_tensors(tmp_path / "out")
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    convert(src, tmp_path / "fp32", dtype="fp32")
    wide = saved_tensors(tmp_path / "fp32")
    assert all(t.dtype == torch.float32 for t in wide.values())
    assert all(torch.equal(wide[k], ref[k].float()) for k in ref if not k.startswith("vision_tower."))
    tower = tower_state(parts["tower"])  # fp32 as released: no longer rounded through fp16
    assert all(torch.equal(wide["vision_tower." + k], t) for k, t in tower.items())


def test_convert_keeps_the_checkpoints_own_vision_tower(parts, tmp_path):
    """A checkpoint trained with an unfrozen tower carries it (model.vision_tower.vision_tower.vision_model.*):
    those tensors are used, not the tower's."""
    from mlan.checkpoints import convert

    trained = save_clip_tower(tmp_path / "trained-tower", seed=9)
    state = original_tensors(seed=0, tower=trained)
    src = save_original_llava(tmp_path / "orig", parts["tower"], state=state, unfreeze_mm_vision_tower=True)
    result = convert(src, tmp_path / "out")
    assert result.vision_from == "the original checkpoint's own"
    got = load_llava(tmp_path / "out").state_dict()
    own, stock = tower_state(trained), tower_state(parts["tower"])
    assert all(torch.equal(got["model.vision_tower." + k], t.half()) for k, t in own.items())
    key = "embeddings.patch_embedding.weight"
    assert not torch.equal(got["model.vision_tower." + key], stock[key].half())


def test_convert_cli_summary(cli, parts, tmp_path):
    r = cli("convert", parts["original"], "--out", tmp_path / "hf")
    assert r.exit_code == 0, r.output
    assert f"{IMAGE_TOKENS} image tokens per image" in r.stdout and "vocabulary 1984 -> 2048 rows" in r.stdout
    assert "written to" in r.stdout and (tmp_path / "hf" / "model.safetensors").is_file()


# -------------------------------------------------------------------------------------------- assemble


def test_assemble_with_a_fresh_projector(cli, parts, tmp_path):
    """LLM + whole CLIPModel + fresh projector: the LLM's and tower's tensors unchanged, the projector
    exactly what LLaVA's nn.Sequential(Linear, GELU, Linear) holds after torch.manual_seed(seed)."""
    r = cli(
        "assemble", "--llm", parts["llm"], "--vision-tower", parts["clip_full"], "--out", tmp_path / "a", "--seed", "4"
    )
    assert r.exit_code == 0, r.output
    assert "fresh mlp2x_gelu" in r.stdout and f"{IMAGE_TOKENS} image tokens" in r.stdout
    state = load_llava(tmp_path / "a").state_dict()
    from transformers import LlamaForCausalLM

    llm = LlamaForCausalLM.from_pretrained(parts["llm"]).state_dict()
    for k, t in llm.items():
        name = "lm_head.weight" if k == "lm_head.weight" else "model.language_model." + k.removeprefix("model.")
        assert torch.equal(state[name][: t.shape[0]], t), k
    for k, t in tower_state(parts["clip_full"]).items():
        assert torch.equal(state["model.vision_tower." + k], t), k
    torch.manual_seed(4)
    h, v = TEXT_DIMS["hidden_size"], VISION_DIMS["hidden_size"]
    ref = torch.nn.Sequential(torch.nn.Linear(v, h), torch.nn.GELU(), torch.nn.Linear(h, h)).state_dict()
    for k, t in ref.items():
        name = k.replace("0.", "linear_1.").replace("2.", "linear_2.")
        assert torch.equal(state["model.multi_modal_projector." + name], t), k
    assert "seed 4" in (tmp_path / "a" / "README.md").read_text()


def test_assemble_with_a_released_projector(parts, tmp_path):
    from mlan.checkpoints import assemble

    result = assemble(parts["llm"], tmp_path / "a", vision_tower=parts["tower"], projector=parts["projector"])
    assert result.dtype == "float32" and result.vocab_rows == (VOCAB, ROWS)
    state = load_llava(tmp_path / "a").state_dict()
    released = torch.load(parts["projector"], weights_only=True)
    for i, name in (("0", "linear_1"), ("2", "linear_2")):
        for p in ("weight", "bias"):
            got = state[f"model.multi_modal_projector.{name}.{p}"]
            assert torch.equal(got, released[f"model.mm_projector.{i}.{p}"].float())
    assert str(parts["projector"]) in (tmp_path / "a" / "README.md").read_text()


def test_assemble_a_tied_llm_in_another_dtype(parts, tmp_path):
    """An LLM whose head is its embedding stays tied (one tensor, grown once); --dtype casts all of it."""
    from mlan.checkpoints import assemble

    llm = save_llm(tmp_path / "tied", seed=5, tokenizer="json", tie_word_embeddings=True)
    result = assemble(llm, tmp_path / "a", vision_tower=parts["tower"], dtype="bf16")
    model = load_llava(tmp_path / "a")
    assert result.dtype == "bfloat16" and model.dtype == torch.bfloat16 and model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    assert model.lm_head.weight.shape[0] == ROWS


@pytest.mark.parametrize("command", ["assemble", "convert"])
def test_help_names_the_tower_option(cli, command):
    assert "--vision-tower" in cli(command, "--help").output


@pytest.mark.parametrize(("feature", "layer", "strategy", "tokens"), [("cls_patch", -1, "full", IMAGE_TOKENS + 1)])
def test_convert_maps_the_feature_selection(parts, tmp_path, feature, layer, strategy, tokens):
    """mm_vision_select_feature cls_patch keeps CLS: strategy "full", one more image token; the layer is kept."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaConfig

    from mlan.checkpoints import convert

    src = save_original_llava(
        tmp_path / "o", parts["tower"], tokenizer="json", mm_vision_select_feature=feature, mm_vision_select_layer=layer
    )
    convert(src, tmp_path / "out")
    config = LlavaConfig.from_pretrained(tmp_path / "out")
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (layer, strategy)
    assert config.image_seq_length == tokens
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    batch = processor(images=Image.new("RGB", (32, 32)), text="<image>\nHi", return_tensors="pt")
    assert int((batch["input_ids"] == config.image_token_index).sum()) == tokens
    load_llava(tmp_path / "out")


# ------------------------------------------------------------------------------------------ bad inputs


def _original(parts, tmp_path, *, drop: str = "", add: dict | None = None, **config) -> list[str]:
    """`convert` of an original checkpoint without tensor `drop`, with tensors `add`, config fields changed."""
    state = {k: v for k, v in original_tensors().items() if k != drop} | (add or {})
    return [
        "convert",
        str(save_original_llava(tmp_path / "orig", parts["tower"], tokenizer="json", state=state, **config)),
    ]


# LLaVA-NeXT's `model.image_newline`, in a checkpoint that claims to be LLaVA-1.5.
NEWLINE = {"model.image_newline": torch.zeros(TEXT_DIMS["hidden_size"], dtype=torch.float16)}


def _no_tokenizer(parts, tmp_path):
    args = _original(parts, tmp_path)
    for f in Path(args[1]).glob("*token*"):
        f.unlink()
    return args


def _projector(parts, tmp_path, **kw):
    path = save_mm_projector(tmp_path / "stage1" / "mm_projector.bin", **kw)
    return ["assemble", "--llm", str(parts["llm"]), "--vision-tower", str(parts["tower"]), "--projector", str(path)]


def _stage1_config(parts, tmp_path):
    """A stage-1 run's config.json beside its mm_projector.bin, from before mm_projector_type existed."""
    args = _projector(parts, tmp_path)
    cfg = original_config(parts["tower"], mm_projector_type=None)
    (tmp_path / "stage1" / "config.json").write_text(json.dumps(cfg))
    return args


BAD = {
    "missing projector": (
        lambda p, t: _original(p, t, drop="model.mm_projector.2.weight"),
        "pytorch_model.bin.index.json: missing tensor model.mm_projector.2.weight",
    ),
    "missing layer tensor": (
        lambda p, t: _original(p, t, drop="model.layers.1.mlp.up_proj.weight"),
        "index.json: missing tensor model.layers.1.mlp.up_proj.weight",
    ),
    "unexpected tensor": (
        lambda p, t: _original(p, t, add=NEWLINE),
        "pytorch_model-00002-of-00002.bin: tensor model.image_newline: unexpected tensor",
    ),
    "linear projector type": (
        lambda p, t: _original(p, t, mm_projector_type="linear"),
        "config.json: mm_projector_type 'linear': Hugging Face LLaVA's projector is always Linear-GELU-Linear",
    ),
    "no projector type": (lambda p, t: _original(p, t, mm_projector_type=None), "no mm_projector_type (LLaVA's"),
    "unknown architecture": (
        lambda p, t: _original(p, t, architectures=["LlavaMptForCausalLM"], model_type="llava_mpt"),
        "architectures ['LlavaMptForCausalLM']: only LlavaLlamaForCausalLM",
    ),
    "unknown model_type": (lambda p, t: _original(p, t, model_type="llava_qwen"), "model_type 'llava_qwen'"),
    "hf llava": (lambda p, t: ["convert", str(p["converted"])], "already a Hugging Face LLaVA config"),
    "plain llm": (lambda p, t: ["convert", str(p["llm"])], "not an original-layout LLaVA checkpoint"),
    "no tokenizer": (_no_tokenizer, "no tokenizer files beside the checkpoint"),
    "tower mismatch": (lambda p, t: _original(p, t, mm_hidden_size=48), "mm_hidden_size 48 but the vision tower"),
    "select feature": (lambda p, t: _original(p, t, mm_vision_select_feature="cls"), "mm_vision_select_feature 'cls'"),
    "start/end tokens": (lambda p, t: _original(p, t, mm_use_im_start_end=True), "mm_use_im_start_end true"),
    "tower offline": (
        lambda p, t: _original(p, t, mm_vision_tower="example/clip-not-cached"),
        "mm_vision_tower (or --vision-tower) 'example/clip-not-cached' is not a local path and the Hugging Face Hub",
    ),
    "checkpoint missing": (lambda p, t: ["convert", str(t / "nope")], "model folder not found"),
    "projector in-dim": (
        lambda p, t: _projector(p, t, in_dim=48),
        "mm_projector.bin: tensor model.mm_projector.0.weight: shape [64, 48], expected [64, 32]",
    ),
    "projector out-dim": (
        lambda p, t: _projector(p, t, out_dim=96),
        "mm_projector.bin: tensor model.mm_projector.0.weight: shape [96, 32], expected [64, 32]",
    ),
    "linear mm_projector.bin": (
        lambda p, t: _projector(p, t, linear=True),
        "tensor model.mm_projector.weight: Hugging Face LLaVA's projector is always Linear-GELU-Linear",
    ),
    "stage-1 config without type": (_stage1_config, "stage1/config.json: no mm_projector_type (LLaVA's default"),
    "no --llm": (lambda p, t: ["assemble", "--vision-tower", str(p["tower"])], "--llm: required"),
    "llm is original": (
        lambda p, t: ["assemble", "--llm", str(p["original"]), "--vision-tower", str(p["tower"])],
        "an original-layout LLaVA checkpoint, not an LLM; use mlan convert",
    ),
    "tower not clip": (
        lambda p, t: ["assemble", "--llm", str(p["llm"]), "--vision-tower", str(p["llm"])],
        "model_type 'llama': expected a CLIP tower",
    ),
    "llm missing": (lambda p, t: ["assemble", "--llm", str(t / "nope")], "--llm "),
    "no --out": (lambda p, t: ["convert", str(p["original"])], "--out: required"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(cli, one_line_error, parts, tmp_path, case):
    make, message = BAD[case]
    args = make(parts, tmp_path)
    out = tmp_path / "out"
    extra = [] if case == "no --out" else ["--out", str(out)]
    msg = one_line_error(cli(*args, *extra))
    assert message in msg, msg
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_default_tower_offline_is_one_line(cli, one_line_error, parts, tmp_path, monkeypatch):
    """The default tower is a hub id: offline (and not in the cache) it fails before any work."""
    monkeypatch.setattr("mlan.hub._cached_model", lambda ref: False)
    msg = one_line_error(cli("assemble", "--llm", parts["llm"], "--out", tmp_path / "out"))
    assert "'openai/clip-vit-large-patch14-336' is not a local path" in msg and "Hub is unreachable" in msg
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(cli, one_line_error, parts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "already exists" in one_line_error(cli("convert", parts["original"], "--out", out))
    assert (out / "keep.txt").exists()
    r = cli("convert", parts["original"], "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists()


# --------------------------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
def test_convert_then_sft_eval_and_merge(cli, parts, tmp_path):
    """A converted original checkpoint is an ordinary mlan model: it fine-tunes with the tiny recipe,
    evaluates, and takes the original LLM merged back."""
    conv, sft, merged = tmp_path / "converted", tmp_path / "sft", tmp_path / "merged"
    r = cli("convert", parts["original"], "--out", conv, "--dtype", "fp32")
    assert r.exit_code == 0, r.output
    r = cli("sft", "tiny", "-o", f"model.path={conv}", "-o", f"output.dir={sft}", "-o", "training.max_steps=4")
    assert r.exit_code == 0, r.output
    results = json.loads((sft / "train_results.json").read_text())
    assert results["steps"] == 4
    r = cli("eval", sft, "--suite", "quickstart", "--tasks", "boolq,arc_easy", "--limit", "2", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ev" / "sft" / "results.json").is_file()
    r = cli("merge", "--multimodal", sft, "--original", parts["llm"], "--alpha", "0.5", "--out", merged)
    assert r.exit_code == 0, r.output
    assert "kept 64 vocabulary rows" in r.stdout
    load_llava(merged)
