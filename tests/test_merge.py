"""mlan merge: the maths against the formula, LLaVA layouts, vocabulary and tying, output loading, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlan.merge.methods import magnitude_trim, merge_tensor

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


# ---------------------------------------------------------------- the maths, on random tensors


def _pair(shape=(64, 48), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


def test_linear_and_task_arithmetic_follow_the_formula():
    vlm, llm = _pair()
    for alpha in (0.0, 0.1, 0.5, 1.0):
        expected = vlm + alpha * (llm - vlm)
        torch.testing.assert_close(merge_tensor(vlm, llm, "task_arithmetic", alpha), expected)
        torch.testing.assert_close(merge_tensor(vlm, llm, "linear", alpha), expected)
    # The ends are exact, not just close.
    assert torch.equal(merge_tensor(vlm, llm, "linear", 1.0), llm)
    assert torch.equal(merge_tensor(vlm, llm, "linear", 0.0), vlm)
    assert torch.equal(merge_tensor(vlm, llm, "task_arithmetic", 0.0), vlm)
    # Inputs are never modified.
    v2, l2 = _pair()
    assert torch.equal(vlm, v2) and torch.equal(llm, l2)


def test_half_precision_keeps_dtype_and_rounds_once():
    vlm, llm = _pair(dtype=torch.bfloat16)
    out = merge_tensor(vlm, llm, "task_arithmetic", 0.3)
    assert out.dtype == torch.bfloat16
    expected = (vlm.float() + 0.3 * (llm.float() - vlm.float())).to(torch.bfloat16)
    assert torch.equal(out, expected)
    assert torch.equal(merge_tensor(vlm, llm, "linear", 1.0), llm)


def test_ties_keeps_the_largest_fraction_of_the_task_vector():
    vlm, llm = _pair()
    delta = llm - vlm
    for density in (0.1, 0.5, 0.9):
        out = merge_tensor(vlm, llm, "ties", 0.4, density)
        k = max(1, int(density * delta.numel()))
        keep = torch.zeros(delta.numel(), dtype=torch.bool)
        keep[delta.abs().view(-1).topk(k).indices] = True
        expected = vlm + 0.4 * delta * keep.view_as(delta)
        torch.testing.assert_close(out, expected)
    assert torch.equal(merge_tensor(vlm, llm, "ties", 0.4, 1.0), merge_tensor(vlm, llm, "task_arithmetic", 0.4))


def test_magnitude_trim_breaks_ties_to_exactly_k():
    t = torch.tensor([1.0, -1.0, 1.0, 0.5, 1.0, 2.0])
    out = magnitude_trim(t.clone(), 0.5)  # k = 3: 2.0 and the first two of the tied 1.0s
    assert out.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0, 2.0]


def test_matches_mergekit_on_random_tensors():
    gta = pytest.importorskip("mergekit.merge_methods.generalized_task_arithmetic")
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.sparsify import SparsificationMethod

    vlm, llm = _pair()
    group = TensorGroup.from_tensors([vlm, llm], ids=["vlm", "llm"], base_index=0)
    for method, sparsification, consensus in (
        ("task_arithmetic", None, None),
        ("ties", SparsificationMethod.magnitude, gta.ConsensusMethod.sum),
    ):
        mk = gta.GeneralizedTaskArithmeticMerge(consensus, sparsification, False, False, method, None, None)
        params = {"weight": {"llm": 0.3}, "density": {"llm": 0.5}, "normalize": False, "rescale": False}
        params |= {"lambda": 1.0, "int8_mask": False}
        expected = mk.merge_group(group, **params)
        torch.testing.assert_close(merge_tensor(vlm, llm, method, 0.3, 0.5 if method == "ties" else 1.0), expected)


def test_dare_is_seeded_unbiased_and_drops_to_density():
    vlm, llm = _pair((200, 100))
    delta = llm - vlm
    out = merge_tensor(vlm, llm, "dare_linear", 1.0, 0.25, seed=3, name="w")
    assert torch.equal(out, merge_tensor(vlm, llm, "dare_linear", 1.0, 0.25, seed=3, name="w"))
    assert not torch.equal(out, merge_tensor(vlm, llm, "dare_linear", 1.0, 0.25, seed=4, name="w"))
    assert not torch.equal(out, merge_tensor(vlm, llm, "dare_linear", 1.0, 0.25, seed=3, name="v"))
    assert torch.equal(out, merge_tensor(vlm, llm, "dare_ties", 1.0, 0.25, seed=3, name="w"))
    # Structure: each entry of the applied task vector is dropped (0) or rescaled by 1/density.
    applied = out - vlm
    kept = applied.abs() > 1e-6
    torch.testing.assert_close(applied[kept], (delta / 0.25)[kept], rtol=1e-5, atol=1e-5)
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    # Expectation: averaged over seeds, the sparse task vector is the dense one.
    mean = torch.stack([merge_tensor(vlm, llm, "dare_linear", 0.5, 0.5, seed=s) - vlm for s in range(200)]).mean(0)
    assert (mean - 0.5 * delta).abs().mean() < 0.05 * (0.5 * delta).abs().mean() + 0.02


# ---------------------------------------------------------------- tiny checkpoints


@pytest.fixture(scope="module")
def models(tiny_llava_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny LLaVA in several on-disk forms, and original LLMs to merge into it."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    root = tmp_path_factory.mktemp("merge-models")
    text_config = LlavaConfig.from_pretrained(tiny_llava_dir).text_config
    paths = {"mm": tiny_llava_dir}

    llava = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    new = root / "mm-new-sharded"
    llava.save_pretrained(new, save_original_format=False, max_shard_size="400KB")
    _copy_side(tiny_llava_dir, new)
    (new / "mixture_manifest.json").write_text(json.dumps({"name": "mlan", "covers_eval_tasks": ["arc_easy"]}))
    paths["mm_new_sharded"] = new

    binary = root / "mm-bin"
    binary.mkdir()
    torch.save(load_file(tiny_llava_dir / "model.safetensors"), binary / "pytorch_model.bin")
    _copy_side(tiny_llava_dir, binary)
    paths["mm_bin"] = binary

    def llm(name: str, seed: int, **changes) -> None:
        from transformers import LlamaForCausalLM

        cfg = text_config.__class__(**{**text_config.to_dict(), **changes})
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        model.save_pretrained(root / name)
        _copy_side(tiny_llava_dir, root / name, TOKENIZER_FILES)
        paths[name] = root / name

    llm("llm", 5)
    llm("llm_small_vocab", 6, vocab_size=text_config.vocab_size - 1)
    llm("llm_tied", 7, tie_word_embeddings=True)
    llm("llm_big_vocab", 8, vocab_size=text_config.vocab_size + 1)
    llm("llm_other_arch", 9, intermediate_size=96)
    return paths


def _copy_side(src: Path, dst: Path, names=None) -> None:
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and (names is None or f.name in names):
            shutil.copy2(f, dst / f.name)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out |= load_file(f)
    if not out:
        out = torch.load(path / "pytorch_model.bin", weights_only=True)
    return out


def _lm(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Language-model tensors under causal-LM names, from either LLaVA layout."""
    out = {}
    for k, v in weights.items():
        for prefix, target in (
            ("language_model.model.", "model."),
            ("model.language_model.", "model."),
            ("language_model.lm_head.", "lm_head."),
        ):
            if k.startswith(prefix):
                out[target + k[len(prefix) :]] = v
        if k == "lm_head.weight":
            out[k] = v
    return out


def _vision(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("model."): v for k, v in weights.items() if "vision_tower" in k or "projector" in k}


def _merge(cli, out: Path, mm: Path, llm: Path, *args) -> None:
    r = cli("merge", "--multimodal", mm, "--original", llm, "--out", out, *args)
    assert r.exit_code == 0, r.output


def test_alpha_zero_reproduces_the_multimodal_model(cli, models, tmp_path):
    _merge(cli, tmp_path / "m", models["mm"], models["llm"], "--alpha", "0")
    out, mm = _weights(tmp_path / "m"), _weights(models["mm"])
    assert out.keys() == mm.keys()
    assert all(torch.equal(out[k], mm[k]) for k in mm)


def test_linear_alpha_one_gives_the_original_llm_and_loads(cli, models, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    _merge(cli, tmp_path / "m", models["mm"], models["llm"], "--method", "linear", "--alpha", "1")
    out, llm, mm = _weights(tmp_path / "m"), _weights(models["llm"]), _weights(models["mm"])
    lm = _lm(out)
    assert lm.keys() == llm.keys() and len(lm) > 10
    assert all(torch.equal(lm[k], llm[k]) for k in llm)
    assert all(torch.equal(v, _vision(mm)[k]) for k, v in _vision(out).items()) and _vision(out)

    for f in ("config.json", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "m" / f).read_bytes() == (models["mm"] / f).read_bytes()
    manifest = json.loads((tmp_path / "m" / "merge_manifest.json").read_text())
    assert manifest["merged_tensors"] == len(llm) and manifest["method"] == "linear"

    model, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    prompt = processor.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    inputs = processor(text=prompt, return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3


def test_new_layout_sharded_and_bin_give_the_same_merge(cli, models, tmp_path):
    args = ("--method", "task_arithmetic", "--alpha", "0.3")
    _merge(cli, tmp_path / "old", models["mm"], models["llm"], *args)
    _merge(cli, tmp_path / "new", models["mm_new_sharded"], models["llm"], *args)
    _merge(cli, tmp_path / "bin", models["mm_bin"], models["llm"], *args)
    old, new, binary = _weights(tmp_path / "old"), _weights(tmp_path / "new"), _weights(tmp_path / "bin")
    assert any(k.startswith("model.language_model.") for k in new)  # the input's layout is kept
    assert len(list((tmp_path / "new").glob("model-*.safetensors"))) > 1
    manifest = (models["mm_new_sharded"] / "mixture_manifest.json").read_bytes()
    assert (tmp_path / "new" / "mixture_manifest.json").read_bytes() == manifest  # evaluation marks seen tasks by it
    index = json.loads((tmp_path / "new" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(new)
    assert binary.keys() == old.keys()
    for a, b in ((_lm(old), _lm(new)), (_vision(old), _vision(new)), (old, binary)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    llm, mm = _weights(models["llm"]), _lm(_weights(models["mm"]))
    for k, v in _lm(old).items():
        torch.testing.assert_close(v, mm[k] + 0.3 * (llm[k] - mm[k]))
    from transformers import LlavaForConditionalGeneration

    _, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "new", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_vocabulary_with_added_tokens_merges_shared_rows_only(cli, models, tmp_path):
    _merge(cli, tmp_path / "m", models["mm"], models["llm_small_vocab"], "--method", "linear", "--alpha", "0.5")
    out, llm, mm = _lm(_weights(tmp_path / "m")), _weights(models["llm_small_vocab"]), _lm(_weights(models["mm"]))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        n = llm[name].shape[0]
        assert out[name].shape == mm[name].shape and n == mm[name].shape[0] - 1
        torch.testing.assert_close(out[name][:n], 0.5 * mm[name][:n] + 0.5 * llm[name])
        assert torch.equal(out[name][n:], mm[name][n:])
    assert json.loads((tmp_path / "m" / "merge_manifest.json").read_text())["kept_vocab_rows"] == 1


def test_tied_original_llm_merges_its_embedding_into_the_head(cli, models, tmp_path):
    assert "lm_head.weight" not in _weights(models["llm_tied"])
    _merge(cli, tmp_path / "m", models["mm"], models["llm_tied"], "--method", "linear", "--alpha", "1")
    out, llm = _lm(_weights(tmp_path / "m")), _weights(models["llm_tied"])
    assert torch.equal(out["lm_head.weight"], llm["model.embed_tokens.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], llm["model.embed_tokens.weight"])


def test_sparse_methods_through_cli_are_deterministic(cli, models, tmp_path):
    mm = _lm(_weights(models["mm"]))
    for method in ("ties", "dare_ties"):
        args = ("--method", method, "--alpha", "1", "--density", "0.3", "--seed", "1")
        _merge(cli, tmp_path / f"{method}-a", models["mm"], models["llm"], *args)
        _merge(cli, tmp_path / f"{method}-b", models["mm"], models["llm"], *args)
        a, b = (tmp_path / f"{method}-a/model.safetensors"), (tmp_path / f"{method}-b/model.safetensors")
        assert a.read_bytes() == b.read_bytes()
        w = _lm(load_file(a))["model.layers.0.mlp.up_proj.weight"]
        changed = (w != mm["model.layers.0.mlp.up_proj.weight"]).float().mean().item()
        assert abs(changed - 0.3) < 0.05


def test_yaml_config_with_override(cli, models, tmp_path):
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(f"multimodal: {models['mm']}\noriginal: {models['llm']}\nmethod: linear\nalpha: 0.2\n")
    r = cli("merge", cfg, "-o", "alpha=1", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m" / "merge_manifest.json").read_text())["alpha"] == 1.0


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def _tokenizer_swapped(models, tmp_path: Path) -> Path:
    """The original LLM with ids 100 and 101 swapped in its tokenizer."""
    llm = tmp_path / "llm-other-tokenizer"
    shutil.copytree(models["llm"], llm)
    tok = json.loads((llm / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    t100, t101 = (next(t for t, i in vocab.items() if i == n) for n in (100, 101))
    vocab[t100], vocab[t101] = 101, 100
    (llm / "tokenizer.json").write_text(json.dumps(tok))
    return llm


def _config_only(models, tmp_path: Path) -> Path:
    """A model folder with the original LLM's config and no weights."""
    llm = tmp_path / "empty"
    llm.mkdir()
    shutil.copy2(models["llm"] / "config.json", llm / "config.json")
    return llm


# case -> (models, tmp_path -> (multimodal, original, more arguments), the message)
BAD_MERGES = {
    "missing multimodal folder": (lambda m, t: (t / "nope", m["llm"], []), "model folder not found"),
    "not llava": (lambda m, t: (m["llm"], m["llm"], []), "not a LLaVA model"),
    "llava as original": (lambda m, t: (m["mm"], m["mm"], []), "is a multimodal model"),
    "other architecture": (
        lambda m, t: (m["mm"], m["llm_other_arch"], []),
        "mismatched architectures: the multimodal model's text_config.intermediate_size",
    ),
    "bigger vocabulary": (
        lambda m, t: (m["mm"], m["llm_big_vocab"], []),
        "tensor lm_head.weight: shape [2048, 64] in the multimodal model",
    ),
    "alpha out of range": (
        lambda m, t: (m["mm"], m["llm"], ["--alpha", "1.5"]),
        "alpha: value error, alpha must be in [0, 1], got 1.5",
    ),
    "density zero": (
        lambda m, t: (m["mm"], m["llm"], ["--method", "ties", "--density", "0"]),
        "density must be in (0, 1], got 0.0",
    ),
    "density with task arithmetic": (
        lambda m, t: (m["mm"], m["llm"], ["--density", "0.5"]),
        "density: method task_arithmetic keeps the whole task vector",
    ),
    "bad number": (
        lambda m, t: (m["mm"], m["llm"], ["--alpha", "x"]),
        "--alpha 'x': expected a comma-separated list of numbers, e.g. 0,0.1,0.2",
    ),
    "original without weights": (lambda m, t: (m["mm"], _config_only(m, t), []), "no model weights"),
    "tokenizers differ": (lambda m, t: (m["mm"], _tokenizer_swapped(m, t), []), "tokenizers differ at id 100: "),
}


@pytest.mark.parametrize("case", list(BAD_MERGES))
def test_bad_input_is_one_line_exit_2(cli, one_line_error, models, tmp_path, case):
    make, expected = BAD_MERGES[case]
    mm, llm, extra = make(models, tmp_path)
    msg = one_line_error(cli("merge", "--multimodal", mm, "--original", llm, "--out", tmp_path / "out", *extra))
    assert expected in msg
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_needs_overwrite(cli, one_line_error, models, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = cli("merge", "--multimodal", models["mm"], "--original", models["llm"], "--out", out)
    assert "already exists (pass --overwrite" in one_line_error(r)
    assert (out / "keep.txt").exists()
    _merge(cli, out, models["mm"], models["llm"], "--overwrite")
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_missing_required_option(cli, one_line_error, models, tmp_path):
    r = cli("merge", "--multimodal", models["mm"], "--out", tmp_path / "m")
    assert "original: required (pass --original)" in one_line_error(r)


def test_partial_write_leaves_nothing(models, tmp_path, monkeypatch):
    """A failure in the middle of writing (here: a merged tensor of the wrong size) leaves no output."""
    from mlan.config.merge import MergeConfig
    from mlan.merge import streaming

    def broken(*a, **k):
        return [memoryview(b"\0")]

    monkeypatch.setattr(streaming, "_merged_chunks", broken)
    cfg = MergeConfig(multimodal=str(models["mm"]), original=str(models["llm"]), out=str(tmp_path / "m"))
    with pytest.raises(RuntimeError, match="declared"):
        streaming.merge_models(cfg)
    assert list(tmp_path.iterdir()) == []


def test_save_file_reference_reader_agrees(tmp_path):
    """The hand-written safetensors writer produces files safetensors itself reads back."""
    from mlan.merge.layout import SafetensorsFile
    from mlan.merge.streaming import SafetensorsWriter, _tensor_bytes

    tensors = {"b": torch.randn(3, 5).to(torch.bfloat16), "a": torch.arange(7), "z": torch.zeros(0)}
    w = SafetensorsWriter(
        tmp_path / "x.safetensors", [(k, _code(v), tuple(v.shape), v.nbytes) for k, v in tensors.items()]
    )
    for k, v in tensors.items():
        w.write(k, _tensor_bytes(v))
    w.close()
    back = load_file(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    save_file({k: v for k, v in tensors.items() if v.numel()}, tmp_path / "ref.safetensors")
    ref = SafetensorsFile(tmp_path / "ref.safetensors")
    assert torch.equal(ref.read("b"), tensors["b"]) and torch.equal(ref.read("a"), tensors["a"])


def _code(t: torch.Tensor) -> str:
    from mlan.merge.layout import DTYPE_CODES

    return DTYPE_CODES[str(t.dtype).removeprefix("torch.")]


def test_row_blocks_give_the_same_merge(cli, models, tmp_path, monkeypatch):
    """Large tensors are merged block of rows by block of rows; blocks that straddle the shared
    vocabulary rows give exactly what merging whole tensors gives."""
    from mlan.merge import streaming

    mm, llm = _lm(_weights(models["mm"])), _weights(models["llm_small_vocab"])
    emb = "model.embed_tokens.weight"
    for method in ("task_arithmetic", "ties"):
        args = ("--method", method, "--alpha", "0.3", *(("--density", "0.4") if method == "ties" else ()))
        whole, blocks = tmp_path / f"{method}-whole", tmp_path / f"{method}-blocks"
        _merge(cli, whole, models["mm"], models["llm_small_vocab"], *args)
        with monkeypatch.context() as m:
            m.setattr(streaming, "CHUNK_ELEMENTS", 64 * 7)  # 7 rows of the 64-wide embedding per block
            _merge(cli, blocks, models["mm"], models["llm_small_vocab"], *args)
        assert (whole / "model.safetensors").read_bytes() == (blocks / "model.safetensors").read_bytes()
        n = llm[emb].shape[0]
        expected = merge_tensor(mm[emb][:n], llm[emb], method, 0.3, 0.4 if method == "ties" else 1.0)
        assert torch.equal(_lm(_weights(whole))[emb][:n], expected)
    monkeypatch.setattr(streaming, "CHUNK_ELEMENTS", 64 * 7)
    _merge(
        cli,
        tmp_path / "dare",
        models["mm"],
        models["llm_small_vocab"],
        "--method",
        "dare_linear",
        "--alpha",
        "1",
        "--density",
        "0.5",
    )
    w = _lm(_weights(tmp_path / "dare"))
    changed = (w[emb][:-1] != mm[emb][:-1]).float().mean().item()
    assert abs(changed - 0.5) < 0.05 and torch.equal(w[emb][-1], mm[emb][-1])


def test_original_in_another_dtype_is_converted(cli, models, tmp_path):
    from transformers import LlamaForCausalLM

    half = tmp_path / "llm-bf16"
    LlamaForCausalLM.from_pretrained(models["llm"], dtype=torch.bfloat16).save_pretrained(half)
    _merge(cli, tmp_path / "m", models["mm"], half, "--method", "linear", "--alpha", "1")
    out, llm = _lm(_weights(tmp_path / "m")), _weights(half)
    assert all(out[k].dtype == torch.float32 and torch.equal(out[k], llm[k].float()) for k in llm)


def test_defaults_latest_run_and_extracted_language_model(cli, models, tmp_path):
    """Without --multimodal the latest finished run is merged; without --out it goes under runs/merges/.
    The original LLM may be the multimodal model's own language model saved by `save_language_model`."""
    from mlan.models import save_language_model
    from mlan.runs import record_latest

    base = save_language_model(models["mm"], tmp_path / "base-llm")
    record_latest(models["mm"], "sft", Path("runs"))
    r = cli("merge", "--original", base, "--alpha", "0.5")
    assert r.exit_code == 0, r.output
    out = Path("runs/merges") / f"{models['mm'].name}-task_arithmetic-a0.5"
    merged, mm = _weights(out), _weights(models["mm"])
    assert merged.keys() == mm.keys() and all(torch.equal(merged[k], mm[k]) for k in mm)  # same weights: no change


def test_merge_maths_edges_by_hand():
    """Edges of mlan.merge.methods found by mutation testing (docs/mutation.md): linear merges computed in float32
    for half precision (float64 kept) and returned in the base's dtype, the default seed and tensor name of
    DARE's mask, a one-entry DARE, an empty trim, the per-tensor seed's derivation, the input checks."""
    import hashlib

    from mlan.merge.methods import random_drop, tensor_seed

    g = torch.Generator().manual_seed(0)
    vlm, llm = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    exact = 0.7 * vlm.double() + 0.3 * llm.double()
    for dtype in (torch.bfloat16, torch.float16):
        out = merge_tensor(vlm.to(dtype), llm.to(dtype), "linear", 0.3)
        assert out.dtype == dtype
        # Rounded once from float32: all but a few near-ties equal the exact value rounded (in-dtype arithmetic
        # misses a fifth or more).
        assert (out != (0.7 * vlm.to(dtype).double() + 0.3 * llm.to(dtype).double()).to(dtype)).sum() < 41
    torch.testing.assert_close(merge_tensor(vlm.double(), llm.double(), "linear", 0.3), exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        merge_tensor(vlm.double(), llm.double(), "task_arithmetic", 0.3), exact, rtol=0, atol=1e-12
    )
    # DARE's defaults: seed 0 and the empty tensor name.
    dare = merge_tensor(vlm, llm, "dare_linear", 1.0, 0.5)
    assert torch.equal(dare, merge_tensor(vlm, llm, "dare_linear", 1.0, 0.5, seed=0, name=""))
    assert not torch.equal(dare, merge_tensor(vlm, llm, "dare_linear", 1.0, 0.5, seed=1, name=""))
    # One entry is dropped or doubled (kept at density 0.5), never left as it is.
    one = {random_drop(torch.tensor([3.0]), 0.5, torch.Generator().manual_seed(s)).item() for s in range(20)}
    assert one == {0.0, 6.0}
    assert magnitude_trim(torch.empty(0), 0.5).numel() == 0
    # sha256 of "seed:name", its first 8 bytes little-endian, the top bit cleared (torch seeds are 63-bit).
    seeds = [tensor_seed(7, f"layers.{i}.weight") for i in range(16)]
    for i, seed in enumerate(seeds):
        digest = hashlib.sha256(f"7:layers.{i}.weight".encode()).digest()
        assert seed == int.from_bytes(digest[:8], "little") % 2**63
    assert (
        tensor_seed(0, "lm_head.weight")
        == int.from_bytes(hashlib.sha256(b"0:lm_head.weight").digest()[:8], "little") % 2**63
    )
    valid = "linear, task_arithmetic, ties, dare_ties, dare_linear"
    with pytest.raises(ValueError, match=rf"unknown merge method 'slerp' \(expected one of {valid}\)"):
        merge_tensor(vlm, llm, "slerp", 0.5)
    with pytest.raises(ValueError, match=r"w: shapes differ: \(4096,\) vs \(2, 2048\)"):
        merge_tensor(vlm, llm.view(2, 2048), "linear", 0.5, name="w")
