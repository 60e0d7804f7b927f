"""Batch orders for training: LLaVA's `group_by_modality_length` (the default) and mlan's wider one.

`llava` is LLaVA's sampler, ported from haotian-liu/LLaVA@c121f04:llava/train/llava_trainer.py
(`split_to_even_chunks` L38-57, `get_modality_length_grouped_indices` L60-85,
`get_length_grouped_indices` L88-96, `LLaVATrainer._get_train_sampler` L135-148). Each modality is
shuffled on its own and cut into megabatches of one optimizer step (per-device batch x processes x
gradient accumulation, as LLaVA passes `world_size * gradient_accumulation_steps`); rows are sorted
by length only inside one megabatch and dealt into per-device batches of similar total length. The
megabatches of both modalities are shuffled together, and the last megabatch of each modality
(full or not) goes, merged and in index order, to the very end. A global batch is therefore a
random draw of one modality's rows, so it mixes that modality's sources as a shuffled order would.

`wide` is mlan's own faster order (no LLaVA code does this): rows are sorted by length inside groups
of 50 micro-step batches, which brings padding under a few percent but makes a batch hold rows of
nearly equal length, which in a task mixture mostly means one source. Simulated on an 80k MLAN_v
mixture (70k text rows at size-proportional shares, 64 rows a step), 78% of its global batches held no
CommonsenseQA/ARC/StrategyQA row, against none of the text batches under `llava`; a model learns the
mixture more slowly. `random` is the Trainer's own uniformly random order (mlan's trainer does not use
this module for it).

Where mlan deliberately differs from LLaVA's code:
- The random draws come from one `torch.Generator` seeded with `seed + epoch`, in LLaVA's order
  (vision permutation, language permutation, megabatch permutation); LLaVA draws from torch's global
  generator. Seeded, the order is the same on every process and after a restart, which is what lets
  a resumed run skip exactly the batches it has seen.
- A single-modality mixture (MLAN's language-only one) is sorted by true length. LLaVA's shortcut
  (L63-65) passes its signed lengths, which are negative for text rows: a text-only megabatch is
  then sorted shortest first and dealt to the per-device batch with the *largest* running total.
  Which rows form a global batch is unaffected; only the per-device split differs.
- Lengths are the exact token counts the collator will see (image tokens included); LLaVA sorts by
  whitespace word counts (llava/train/train.py L684-690). Again only the per-device split can differ.

Why not transformers' `train_sampling_strategy="group_by_length"`: it mixes modalities and needs
tokenized `input_ids`, while TRL tokenizes vision rows only in the collator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch.utils.data import Sampler

BatchOrder = Literal["llava", "wide", "random"]

# `wide` order: micro-step batches per sorting group (transformers' LengthGroupedSampler uses 50).
GROUP_BATCHES = 50


# --- llava: LLaVA's group_by_modality_length -------------------------------------------------------


def split_to_even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """`indices` (sorted longest first) dealt into `num_chunks` equal-size chunks of similar total length:
    each row goes to the chunk with the smallest total so far (LLaVA L38-57; strided when it does not divide)."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals: list[float] = [0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, num_chunks: int, generator: torch.Generator
) -> list[int]:
    """A permutation of `range(len(lengths))`: shuffled, cut into megabatches of `batch_size * num_chunks`,
    each sorted longest first and split into `num_chunks` per-device batches (LLaVA L88-96)."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch = batch_size * num_chunks
    out: list[int] = []
    for start in range(0, len(lengths), megabatch):
        chunk = sorted(indices[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        out.extend(i for batch in split_to_even_chunks(chunk, lengths, num_chunks) for i in batch)
    return out


def llava_grouped_indices(
    lengths: Sequence[int],
    modalities: Sequence[bool],
    batch_size: int,
    num_chunks: int,
    generator: torch.Generator,
) -> list[int]:
    """One epoch's order under LLaVA's `get_modality_length_grouped_indices` (L60-85).

    `batch_size`: rows per device and forward pass; `num_chunks`: processes x accumulation steps, so
    that one megabatch of `batch_size * num_chunks` rows is one optimizer step.
    """
    if all(modalities) or not any(modalities):
        return length_grouped_indices(lengths, batch_size, num_chunks, generator)
    mm = [i for i, m in enumerate(modalities) if m]
    lang = [i for i, m in enumerate(modalities) if not m]
    # Vision first, then language: the order in which LLaVA draws its two permutations (L69-70).
    mm_order = [mm[i] for i in length_grouped_indices([lengths[i] for i in mm], batch_size, num_chunks, generator)]
    lang_order = [
        lang[i] for i in length_grouped_indices([lengths[i] for i in lang], batch_size, num_chunks, generator)
    ]
    size = batch_size * num_chunks
    mm_mega = [mm_order[i : i + size] for i in range(0, len(mm_order), size)]
    lang_mega = [lang_order[i : i + size] for i in range(0, len(lang_order), size)]
    # Each modality's last megabatch, full or not, is held back for one mixed batch at the end (L75-83).
    additional = mm_mega[-1] + lang_mega[-1]
    megabatches = mm_mega[:-1] + lang_mega[:-1]
    perm = torch.randperm(len(megabatches), generator=generator).tolist()
    out = [i for p in perm for i in megabatches[p]]
    return out + sorted(additional)


# --- wide: mlan's speed option ---------------------------------------------------------------------


def _wide_batches(
    indices: list[int], lengths: Sequence[int], global_batch: int, generator: torch.Generator
) -> list[list[int]]:
    """Global batches of `indices` (one modality): shuffled, sorted by length inside groups."""
    perm = torch.randperm(len(indices), generator=generator).tolist()
    shuffled = [indices[i] for i in perm]
    group = global_batch * GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(shuffled), group):
        chunk = sorted(shuffled[start : start + group], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[b : b + global_batch] for b in range(0, len(chunk), global_batch))
    return batches


def wide_grouped_indices(
    lengths: Sequence[int],
    modalities: Sequence[bool],
    per_device_batch: int,
    world_size: int,
    generator: torch.Generator,
) -> list[int]:
    """One epoch's order under the `wide` rule: every run of `world_size * per_device_batch` indices
    is one micro-step batch of one modality and similar length, except a mixed leftover batch at the end."""
    global_batch = per_device_batch * world_size
    full: list[list[int]] = []
    leftovers: list[int] = []
    for flag in (False, True):
        idx = [i for i, m in enumerate(modalities) if bool(m) == flag]
        if not idx:
            continue
        batches = _wide_batches(idx, lengths, global_batch, generator)
        if len(batches[-1]) < global_batch:
            leftovers.extend(batches.pop())
        full.extend(batches)
    order = torch.randperm(len(full), generator=generator).tolist()
    out = [i for b in order for i in full[b]]
    # One mixed batch at the end, sorted by length so each rank's share is of similar length.
    out.extend(sorted(leftovers, key=lambda i: lengths[i], reverse=True))
    return out


class ModalityLengthGroupedSampler(Sampler[int]):
    """Seeded sampler over the `llava` or `wide` order; epoch `e` uses seed `seed + e`.

    The same seed and epoch give the same order on every process and after a restart, which is
    what lets the Trainer skip the batches already seen when a run resumes from a checkpoint.
    `accumulation` (gradient accumulation steps) widens LLaVA's megabatch to one optimizer step;
    the `wide` order keeps its groups of micro-step batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        modalities: Sequence[bool],
        per_device_batch: int,
        world_size: int = 1,
        seed: int = 0,
        *,
        order: Literal["llava", "wide"] = "llava",
        accumulation: int = 1,
    ) -> None:
        if len(lengths) != len(modalities):
            raise ValueError("lengths and modalities differ in size")
        if order not in ("llava", "wide"):
            raise ValueError(f"unknown batch order {order!r} (llava or wide)")
        self.lengths = list(lengths)
        self.modalities = [bool(m) for m in modalities]
        self.per_device_batch = per_device_batch
        self.world_size = world_size
        self.accumulation = accumulation
        self.order = order
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate, or mlan's `_run_epoch`) at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.order == "llava":
            chunks = self.world_size * self.accumulation
            yield from llava_grouped_indices(self.lengths, self.modalities, self.per_device_batch, chunks, g)
        else:
            yield from wide_grouped_indices(self.lengths, self.modalities, self.per_device_batch, self.world_size, g)
