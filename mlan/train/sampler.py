"""Modality- and length-grouped batch order (after LLaVA's `group_by_modality_length`).

A text-only row is a few hundred tokens; an image row carries hundreds of image tokens more.
Random batches pad every text row up to the longest image row beside it. Here each modality is
shuffled on its own, cut into groups of many global batches, sorted by length inside a group and
sliced into global batches (`world_size * per_device_batch` rows, all one modality, similar
length); the global batches of both modalities are then shuffled together. What is left of each
modality forms one mixed batch at the very end, as in LLaVA.

Why not transformers' `train_sampling_strategy="group_by_length"`: it mixes modalities and needs
tokenized `input_ids`, while TRL tokenizes vision rows only in the collator. LLaVA's own sampler
sorts only inside one global batch, which balances ranks but leaves most of the padding; the
larger sorting group here is what brings padding under a few percent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Global batches per sorting group: large enough that neighbours in length are close, small
# enough that the order still mixes the whole mixture (transformers' LengthGroupedSampler uses 50).
GROUP_BATCHES = 50


def _length_grouped(
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


def modality_length_grouped_indices(
    lengths: Sequence[int],
    modalities: Sequence[bool],
    per_device_batch: int,
    world_size: int,
    generator: torch.Generator,
) -> list[int]:
    """One epoch's order of row indices.

    `lengths[i]` is the row's token count, `modalities[i]` True for a row with images.
    Consecutive runs of `per_device_batch` indices are the per-process batches, and each run of
    `world_size * per_device_batch` is one global batch, of one modality except the last.
    """
    global_batch = per_device_batch * world_size
    full: list[list[int]] = []
    leftovers: list[int] = []
    for flag in (False, True):
        idx = [i for i, m in enumerate(modalities) if bool(m) == flag]
        if not idx:
            continue
        batches = _length_grouped(idx, lengths, global_batch, generator)
        if len(batches[-1]) < global_batch:
            leftovers.extend(batches.pop())
        full.extend(batches)
    order = torch.randperm(len(full), generator=generator).tolist()
    out = [i for b in order for i in full[b]]
    # One mixed batch at the end, sorted by length so each rank's share is of similar length.
    out.extend(sorted(leftovers, key=lambda i: lengths[i], reverse=True))
    return out


class ModalityLengthGroupedSampler(Sampler[int]):
    """Seeded sampler over `modality_length_grouped_indices`; epoch `e` uses seed `seed + e`.

    The same seed and epoch give the same order on every process and after a restart, which is
    what lets the Trainer skip the batches already seen when a run resumes from a checkpoint.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        modalities: Sequence[bool],
        per_device_batch: int,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if len(lengths) != len(modalities):
            raise ValueError("lengths and modalities differ in size")
        self.lengths = list(lengths)
        self.modalities = list(modalities)
        self.per_device_batch = per_device_batch
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        yield from modality_length_grouped_indices(
            self.lengths, self.modalities, self.per_device_batch, self.world_size, g
        )
