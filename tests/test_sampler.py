"""Batch orders (mlan.train.sampler): LLaVA's `group_by_modality_length` as LLaVA's code computes it,
the `wide` speed option, and the recipe field that picks one."""

from __future__ import annotations

import random

import pytest
import torch

from mlan.train.sampler import ModalityLengthGroupedSampler, llava_grouped_indices

# --- LLaVA's code, copied unchanged as the reference (Apache-2.0) ----------------------------------
# haotian-liu/LLaVA@c121f0432da27facab705978f83c4ada465e46fd:llava/train/llava_trainer.py L38-96.
# LLaVA passes signed lengths (negative: a text-only row) and draws from torch's global generator.


def llava_split_to_even_chunks(indices, lengths, num_chunks):
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    num_indices_per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    chunks_lengths = [0 for _ in range(num_chunks)]
    for index in indices:
        shortest_chunk = chunks_lengths.index(min(chunks_lengths))
        chunks[shortest_chunk].append(index)
        chunks_lengths[shortest_chunk] += lengths[index]
        if len(chunks[shortest_chunk]) == num_indices_per_chunk:
            chunks_lengths[shortest_chunk] = float("inf")
    return chunks


def llava_get_modality_length_grouped_indices(lengths, batch_size, world_size, generator=None):
    assert all(l != 0 for l in lengths), "Should not have zero length."  # noqa: E741
    if all(l > 0 for l in lengths) or all(l < 0 for l in lengths):  # noqa: E741
        return llava_get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)
    mm_indices, mm_lengths = zip(*[(i, l) for i, l in enumerate(lengths) if l > 0], strict=True)  # noqa: E741
    lang_indices, lang_lengths = zip(*[(i, -l) for i, l in enumerate(lengths) if l < 0], strict=True)  # noqa: E741
    mm_shuffle = [mm_indices[i] for i in llava_get_length_grouped_indices(mm_lengths, batch_size, world_size, None)]
    lang_shuffle = [
        lang_indices[i] for i in llava_get_length_grouped_indices(lang_lengths, batch_size, world_size, None)
    ]
    megabatch_size = world_size * batch_size
    mm_megabatches = [mm_shuffle[i : i + megabatch_size] for i in range(0, len(mm_shuffle), megabatch_size)]
    lang_megabatches = [lang_shuffle[i : i + megabatch_size] for i in range(0, len(lang_shuffle), megabatch_size)]
    last_mm = mm_megabatches[-1]
    last_lang = lang_megabatches[-1]
    additional_batch = last_mm + last_lang
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    megabatch_indices = torch.randperm(len(megabatches), generator=generator)
    megabatches = [megabatches[i] for i in megabatch_indices]
    if len(additional_batch) > 0:
        megabatches.append(sorted(additional_batch))
    return [i for megabatch in megabatches for i in megabatch]


def llava_get_length_grouped_indices(lengths, batch_size, world_size, generator=None, merge=True):
    indices = torch.randperm(len(lengths), generator=generator)
    megabatch_size = world_size * batch_size
    megabatches = [indices[i : i + megabatch_size].tolist() for i in range(0, len(lengths), megabatch_size)]
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    megabatches = [llava_split_to_even_chunks(megabatch, lengths, world_size) for megabatch in megabatches]
    return [i for megabatch in megabatches for batch in megabatch for i in batch]


# ---------------------------------------------------------------------------------------------------


def _rows(n: int, vision_share: float, seed: int) -> tuple[list[int], list[bool]]:
    rnd = random.Random(seed)
    has_image = [rnd.random() < vision_share for _ in range(n)]
    lengths = [rnd.randint(600, 900) if m else rnd.randint(20, 400) for m in has_image]
    return lengths, has_image


def test_llava_order_by_hand():
    """Ten rows, 2 per device, one process: derived by hand from the three permutations drawn."""
    has_image = [False, True, False, False, True, False, True, False, False, True]
    lengths = [30, 700, 10, 50, 650, 20, 800, 40, 60, 600]
    g = torch.Generator().manual_seed(3)
    perms = [torch.randperm(k, generator=g).tolist() for k in (4, 6, 3)]
    assert perms == [[2, 3, 1, 0], [3, 1, 2, 0, 5, 4], [1, 2, 0]]  # the draws the derivation below uses
    # Vision rows [1, 4, 6, 9] in permutation [2, 3, 1, 0]: rows 6, 9 | 4, 1; sorted longest first inside each
    # 2-row megabatch: [6 (800), 9 (600)], [1 (700), 4 (650)].
    # Language rows [0, 2, 3, 5, 7, 8] in permutation [3, 1, 2, 0, 5, 4]: [5, 2], [3, 0], [8, 7] (each sorted).
    # Each modality's last megabatch is held back: [1, 4] + [8, 7] -> in index order [1, 4, 7, 8] at the end.
    # The rest, [[6, 9], [5, 2], [3, 0]], in permutation [1, 2, 0]: [5, 2], [3, 0], [6, 9].
    expected = [5, 2, 3, 0, 6, 9, 1, 4, 7, 8]
    assert llava_grouped_indices(lengths, has_image, 2, 1, torch.Generator().manual_seed(3)) == expected
    assert list(ModalityLengthGroupedSampler(lengths, has_image, 2, 1, seed=3)) == expected


@pytest.mark.parametrize(
    ("n", "vision_share", "batch", "chunks"),
    [(1000, 0.25, 4, 2), (997, 0.5, 8, 8), (300, 0.9, 2, 3), (64, 0.1, 4, 4), (513, 0.3, 3, 1)],
)
def test_llava_order_equals_llavas_code(n, vision_share, batch, chunks):
    """mlan's seeded generator in place of torch's global one: the same permutations, the same order."""
    lengths, has_image = _rows(n, vision_share, seed=n)
    signed = [n_ if m else -n_ for n_, m in zip(lengths, has_image, strict=True)]
    torch.manual_seed(11)
    theirs = llava_get_modality_length_grouped_indices(signed, batch, chunks)
    assert llava_grouped_indices(lengths, has_image, batch, chunks, torch.Generator().manual_seed(11)) == theirs


def test_single_modality_sorts_by_true_length():
    """A language-only mixture: the same global batches as LLaVA's code, but each sorted longest first
    (LLaVA's shortcut passes negative lengths and sorts text rows shortest first)."""
    lengths, _ = _rows(640, 0.0, seed=5)
    torch.manual_seed(2)
    theirs = llava_get_modality_length_grouped_indices([-n for n in lengths], 4, 4)
    ours = llava_grouped_indices(lengths, [False] * 640, 4, 4, torch.Generator().manual_seed(2))
    mega = lambda order: [sorted(order[i : i + 16]) for i in range(0, 640, 16)]  # noqa: E731
    assert mega(ours) == mega(theirs) and ours != theirs
    for start in range(0, 640, 4):  # each per-device batch of ours holds its megabatch's rows longest first
        assert [lengths[i] for i in ours[start : start + 4]] == sorted(
            (lengths[i] for i in ours[start : start + 4]), reverse=True
        )
    vision = llava_grouped_indices(lengths, [True] * 640, 4, 4, torch.Generator().manual_seed(2))
    torch.manual_seed(2)
    assert vision == llava_get_modality_length_grouped_indices(lengths, 4, 4)  # positive lengths: identical


def test_llava_batches_are_one_modality_and_accumulation_widens_them():
    lengths, has_image = _rows(1000, 0.25, seed=0)
    s = ModalityLengthGroupedSampler(lengths, has_image, per_device_batch=4, world_size=2, seed=7, accumulation=2)
    order = list(s)
    assert sorted(order) == list(range(1000)) and order == list(s)  # a permutation, the same on every call
    s.set_epoch(1)
    assert list(s) != order  # another epoch, another order
    steps = [order[i : i + 16] for i in range(0, 1000, 16)]  # 4 per device x 2 processes x 2 accumulation
    mixed = [k for k, b in enumerate(steps) if len({has_image[i] for i in b}) > 1]
    # Only the held-back rows at the end (up to one full megabatch of each modality) mix modalities.
    assert mixed and min(mixed) >= len(steps) - 2


def _source_mixing(order: list[int], source: list[int], batch: int) -> float:
    batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    return sum(len({source[i] for i in b}) > 1 for b in batches) / len(batches)


def _without(order: list[int], source: list[int], batch: int) -> float:
    batches = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    return sum(all(source[i] == 0 for i in b) for b in batches) / len(batches)


def test_llava_batches_mix_sources_where_wide_ones_do_not():
    """A two-source language mixture of SQuAD-like (long) and CommonsenseQA-like (short) rows, 64 rows per
    optimizer step (8 per device x 8 processes, as MLAN): LLaVA's rule draws each step at random, so nearly
    every step holds both sources; the wide rule sorts them apart."""
    rnd = random.Random(1)
    source = [0] * 4800 + [1] * 1600
    lengths = [max(40, int(rnd.gauss(230, 60))) if s == 0 else max(20, int(rnd.gauss(75, 15))) for s in source]
    flags = [False] * len(source)
    llava = list(ModalityLengthGroupedSampler(lengths, flags, 8, 8, seed=0, order="llava"))
    wide = list(ModalityLengthGroupedSampler(lengths, flags, 8, 8, seed=0, order="wide"))
    assert _source_mixing(llava, source, 64) > 0.95 > 0.3 > _source_mixing(wide, source, 64)
    # The measure: steps holding no row of the smaller source (a quarter of the rows).
    assert _without(llava, source, 64) < 0.01 < 0.5 < _without(wide, source, 64)


def test_wide_order_keeps_padding_low():
    """The `wide` speed option (mlan's own, not LLaVA's): one modality per micro-step batch, little padding."""
    lengths, has_image = _rows(1000, 0.25, seed=0)
    order = list(ModalityLengthGroupedSampler(lengths, has_image, 4, 2, seed=7, order="wide"))
    assert sorted(order) == list(range(1000))
    batches = [order[i : i + 8] for i in range(0, 1000, 8)]
    mixed = [b for b in batches if len({has_image[i] for i in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] == batches[-1])  # only the leftover batch mixes

    def padding(order):
        per_device = [order[i : i + 4] for i in range(0, len(order), 4)]
        real = sum(lengths[i] for b in per_device for i in b)
        return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in per_device)

    llava = list(ModalityLengthGroupedSampler(lengths, has_image, 4, 2, seed=7))
    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(order) < 0.05 < padding(llava) < padding(random_order)


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="differ in size"):
        ModalityLengthGroupedSampler([1, 2], [True], 1)
    with pytest.raises(ValueError, match="unknown batch order"):
        ModalityLengthGroupedSampler([1], [True], 1, order="random")  # type: ignore[arg-type]


def test_recipe_batch_order_and_its_older_name(tmp_path):
    from mlan.config.base import load_config
    from mlan.config.recipe import SFTRecipe, TrainingSection
    from mlan.errors import MlanError
    from mlan.paths import shipped_files

    assert TrainingSection().batch_order == "random"  # with packing: the fastest to a quality (docs/benchmarks.md)
    assert TrainingSection(group_by_modality_length=True).batch_order == "llava"
    assert TrainingSection(group_by_modality_length=False).batch_order == "random"
    assert TrainingSection(group_by_modality_length=False, batch_order="random").batch_order == "random"
    assert "group_by_modality_length" not in TrainingSection(group_by_modality_length=True).model_dump()
    recipes = {f.stem: load_config(f, SFTRecipe) for f in shipped_files("recipes")}
    # The lab measured its numbers with uniformly random batches; its recipes keep the older name.
    assert {n: r.training.batch_order for n, r in recipes.items() if n.startswith("lab_")} == dict.fromkeys(
        ("lab_pretrain", "lab_stage1", "lab_stage2", "lab_stage2_wings"), "random"
    )
    # MLAN's stage-2 recipes keep LLaVA's order, as MLAN's finetune.sh sets it.
    mlan = ("vicuna", "llama2", "vicuna_lora", "vicuna_qlora", "llama2_lora")
    assert {n: recipes[n].training.batch_order for n in mlan} == dict.fromkeys(mlan, "llava")
    bad = tmp_path / "r.yaml"
    bad.write_text(
        "model: {path: m}\ndata: {mixture: x}\ntraining: {group_by_modality_length: true, batch_order: wide}\n"
    )
    with pytest.raises(MlanError, match="means batch_order llava, but batch_order is wide") as e:
        load_config(bad, SFTRecipe)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("seed", range(8))
def test_wide_order_by_hand(seed):
    """The `wide` order of six rows, two per micro-step batch: language rows drawn first, each modality
    sorted longest first into full batches, the full batches shuffled, and the leftovers of both modalities
    last, longest first. Only the order of the two full batches is random: the third draw of the generator."""
    lengths = [30, 40, 50, 15, 25, 35]  # rows 0-2 text, 3-5 with an image
    has_image = [False, False, False, True, True, True]
    g = torch.Generator().manual_seed(seed)
    torch.randperm(3, generator=g)  # the language rows' shuffle
    torch.randperm(3, generator=g)  # the vision rows' shuffle
    full = [[2, 1], [5, 4]]  # language then vision: the two longest of each, longest first
    expected = [i for b in torch.randperm(2, generator=g).tolist() for i in full[b]] + [0, 3]
    torch.manual_seed(seed + 100)  # the global generator plays no part
    assert list(ModalityLengthGroupedSampler(lengths, has_image, 1, 2, seed=seed, order="wide")) == expected
    # Four text rows: two full batches, no leftover (the last batch is full, so it is shuffled with the others).
    g = torch.Generator().manual_seed(seed)
    torch.randperm(4, generator=g)
    full = [[1, 3], [2, 0]]  # lengths 40 30 | 20 10
    expected = [i for b in torch.randperm(2, generator=g).tolist() for i in full[b]]
    assert list(ModalityLengthGroupedSampler([10, 40, 20, 30], [False] * 4, 1, 2, seed=seed, order="wide")) == expected


@pytest.mark.parametrize("order", ["llava", "wide"])
def test_sampler_seeds_defaults_and_single_modality(order):
    """Epoch e uses seed + e; the defaults are one process and seed 0; the global generator plays no part;
    a mixture of one modality (either one) keeps every row."""
    lengths, has_image = _rows(96, 0.5, seed=3)
    sampler = ModalityLengthGroupedSampler(lengths, has_image, 2, 2, seed=5, order=order)
    sampler.set_epoch(2)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(1)
    assert list(sampler) == first == list(ModalityLengthGroupedSampler(lengths, has_image, 2, 2, seed=7, order=order))
    assert first != list(ModalityLengthGroupedSampler(lengths, has_image, 2, 2, seed=5, order=order))
    defaults = list(ModalityLengthGroupedSampler(lengths, has_image, 2, order=order))
    assert defaults == list(ModalityLengthGroupedSampler(lengths, has_image, 2, 1, 0, order=order))
    assert defaults != list(ModalityLengthGroupedSampler(lengths, has_image, 2, 2, 0, order=order))
    assert defaults != list(ModalityLengthGroupedSampler(lengths, has_image, 2, 1, 1, order=order))
    for flag in (False, True):
        one = list(ModalityLengthGroupedSampler(lengths[:9], [flag] * 9, 2, 2, order=order))
        assert sorted(one) == list(range(9))
