"""`sparsify_scope`: ties' magnitude trim per tensor (mergekit's scope) or over the whole task vector
(one threshold, the TIES authors' scope), found by a streamed exact radix select."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlan.merge.methods import add_task_vector, merge_tensor
from mlan.merge.sparsify import global_trim


def _trim_blocks(blocks: list[torch.Tensor], density: float) -> list[torch.Tensor]:
    """Run the global trim over `blocks` (signed task-vector pieces) and apply it in order."""
    work = blocks[0].dtype
    total = sum(b.numel() for b in blocks)
    trim = global_trim(lambda: (b.abs().view(-1) for b in blocks), density, work, total)
    out = [b.clone() for b in blocks]
    for b in out:
        trim.apply(b)
    assert trim.ties_left == 0
    return out


def test_global_keeps_the_top_fraction_across_two_tensors():
    # Ten entries, density 0.3: the three largest magnitudes of the whole vector are -5, 4 and 3.
    # Per tensor, each would keep int(0.3 * n) = 1 entry instead: -5 in `a`, 4 in `b`.
    a = torch.tensor([0.1, -5.0, 0.2, 3.0])
    b = torch.tensor([1.0, 2.0, -0.05, 4.0, 0.3, 0.4])
    ga, gb = _trim_blocks([a, b], 0.3)
    assert ga.tolist() == [0.0, -5.0, 0.0, 3.0]
    assert gb.tolist() == [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]
    # The tensor scope, for contrast (mergekit's count per tensor).
    assert merge_tensor(torch.zeros(4), a, "ties", 1.0, 0.3).tolist() == [0.0, -5.0, 0.0, 0.0]
    assert merge_tensor(torch.zeros(6), b, "ties", 1.0, 0.3).tolist() == [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]
    # A tensor whose task vector is small loses all of it.
    small, big = _trim_blocks([torch.tensor([0.01, -0.02]), torch.tensor([1.0, -2.0, 3.0, 0.5])], 0.5)
    assert small.tolist() == [0.0, 0.0] and big.tolist() == [1.0, -2.0, 3.0, 0.0]


def test_global_ties_at_the_threshold_are_kept_in_order():
    # Six entries of magnitude 1 around one 2, density 0.5: k = 3, so 2 and the first two tied 1s.
    a, b = torch.tensor([1.0, -1.0]), torch.tensor([1.0, 2.0, 1.0, -1.0, 0.5])
    ga, gb = _trim_blocks([a, b], 3 / 7)
    assert ga.tolist() == [1.0, -1.0] and gb.tolist() == [0.0, 2.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_select_is_exact_on_random_blocks(dtype):
    """Against a whole-vector top-k with ties broken by position, on blocks of several sizes whose
    magnitudes span many binades, plus a block of exact ties (no zeros, so kept entries are visible)."""
    g = torch.Generator().manual_seed(0)
    sizes = (7, 300, 1, 64)
    blocks = [torch.randn(n, generator=g, dtype=torch.float64).to(dtype) * 10.0 ** (i - 2) for i, n in enumerate(sizes)]
    signs = torch.randint(0, 2, (200,), generator=g) * 2 - 1
    blocks.append((torch.randint(1, 9, (200,), generator=g) * signs).to(dtype) / 4)
    flat = torch.cat(blocks)
    order = sorted(range(flat.numel()), key=lambda i: (-abs(float(flat[i])), i))
    for density in (0.001, 0.1, 0.37, 0.5, 0.99, 1.0):
        k = max(1, int(density * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[order[:k]] = True
        assert torch.equal(torch.cat(_trim_blocks(blocks, density)), flat * mask), density


# ---------------------------------------------------------------- through the CLI, on the tiny LLaVA


@pytest.fixture(scope="module")
def llm_dir(tiny_llava_dir, tmp_path_factory) -> Path:
    """An original LLM for the tiny LLaVA, one vocabulary row short (that row is no part of the task vector)."""
    import shutil

    from transformers import LlamaForCausalLM, LlavaConfig

    text_config = LlavaConfig.from_pretrained(tiny_llava_dir).text_config
    cfg = text_config.__class__(**{**text_config.to_dict(), "vocab_size": text_config.vocab_size - 1})
    torch.manual_seed(11)
    out = tmp_path_factory.mktemp("scope") / "llm"
    LlamaForCausalLM(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_llava_dir / name).is_file():
            shutil.copy2(tiny_llava_dir / name, out / name)
    return out


def _lm(folder: Path) -> dict[str, torch.Tensor]:
    """Language-model tensors of a tiny LLaVA folder under causal-LM names, in the merge's write order."""
    weights = load_file(folder / "model.safetensors")
    out = {}
    for key in sorted(weights):
        for prefix, target in (("language_model.model.", "model."), ("model.language_model.", "model.")):
            if key.startswith(prefix):
                out[target + key[len(prefix) :]] = weights[key]
        if key in ("lm_head.weight", "language_model.lm_head.weight"):
            out["lm_head.weight"] = weights[key]
    return out


def test_global_scope_through_the_cli(cli, tiny_llava_dir, llm_dir, tmp_path):
    mm, llm = _lm(tiny_llava_dir), load_file(llm_dir / "model.safetensors")
    base = {n: mm[n][: llm[n].shape[0]] if mm[n].dim() else mm[n] for n in mm}
    deltas = {n: llm[n].float() - base[n].float() for n in mm}
    flat = torch.cat([d.view(-1) for d in deltas.values()])
    k = int(0.3 * flat.numel())
    threshold = flat.abs().topk(k).values[-1]

    args = ("merge", "--multimodal", tiny_llava_dir, "--original", llm_dir, "--method", "ties")
    args += ("--alpha", "0.5", "--density", "0.3")
    r = cli(*args, "--sparsify-scope", "global", "--out", tmp_path / "global")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "global" / "merge_manifest.json").read_text())
    assert manifest["sparsify_scope"] == "global"
    assert manifest["global_trim"] == {"kept": k, "total": flat.numel()}
    out = _lm(tmp_path / "global")
    kept = 0
    for n, d in deltas.items():
        mask = d.abs() >= threshold  # random weights: no ties at the threshold
        kept += int(mask.sum())
        shared = add_task_vector(base[n], d * mask, 0.5)
        assert torch.equal(out[n][: shared.shape[0]], shared), n
        assert torch.equal(out[n][shared.shape[0] :], mm[n][shared.shape[0] :]), n  # rows the LLM lacks
    assert kept == k
    # The tensor scope is unchanged: each tensor trimmed on its own, as merge_tensor does.
    r = cli(*args, "--out", tmp_path / "tensor")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "tensor" / "merge_manifest.json").read_text())["sparsify_scope"] == "tensor"
    per_tensor = _lm(tmp_path / "tensor")
    for n in deltas:
        expected = merge_tensor(base[n], llm[n], "ties", 0.5, 0.3)
        assert torch.equal(per_tensor[n][: expected.shape[0]], expected), n
    assert any(not torch.equal(per_tensor[n], out[n]) for n in deltas)


def test_global_scope_needs_ties(cli, one_line_error, tiny_llava_dir, llm_dir, tmp_path):
    args = ("merge", "--multimodal", tiny_llava_dir, "--original", llm_dir, "--out", tmp_path / "m")
    r = cli(*args, "--method", "dare_ties", "--density", "0.5", "--sparsify-scope", "global")
    assert "sparsify_scope: global applies to ties' magnitude trim, not to method dare_ties" in one_line_error(r)
    r = cli(*args, "--method", "ties", "--density", "0.5", "--sparsify-scope", "model")
    assert "sparsify_scope" in one_line_error(r)
    assert not (tmp_path / "m").exists()


def test_trim_counts_by_hand():
    """What a trim records, k of n (found by mutation testing, docs/mutation.md): per tensor
    max(1, int(density * n)), and a one-entry vector is trimmed globally rather than skipped as empty."""
    from mlan.merge.sparsify import tensor_trim

    trim = tensor_trim(torch.tensor([3.0, 1.0, 2.0, 5.0]), 0.5)
    assert (trim.kept, trim.total, trim.threshold.item(), trim.ties_left) == (2, 4, 3.0, 1)
    assert (tensor_trim(torch.tensor([1.0, 2.0, 3.0]), 0.1).kept, tensor_trim(torch.ones(10), 0.25).kept) == (1, 2)
    one = global_trim(lambda: [torch.tensor([0.5])], 0.5, torch.float32, 1)
    assert (one.kept, one.total, one.threshold.item(), one.ties_left) == (1, 1, 0.5, 1)
    assert global_trim(lambda: [], 0.5, torch.float32, 0) is None


def test_global_trim_counts_exactly_past_float32():
    """The histogram counts are integers: past 2**24 entries in one bucket (any 7B model) a float32 count
    rounds, and the number of entries above the threshold with it. 2**24 + 2 ones and one 2, k = 2: the
    threshold is 1 and exactly one tied 1 may be kept."""
    n = (1 << 24) + 3
    x = torch.ones(n)
    x[7] = 2.0
    trim = global_trim(lambda: [x], 2.5 / n, torch.float32, n)
    assert (trim.kept, trim.threshold.item(), trim.ties_left) == (2, 1.0, 1)
