"""TIES' magnitude trim, per tensor or over the whole task vector (`sparsify_scope`), streamed.

`tensor` (mergekit's scope, the default): each tensor keeps its own ``max(1, int(K * n))`` entries of
largest magnitude. `global` (the scope of the TIES authors' code, which flattens the whole task
vector into one before trimming: prateeky2806/ties-merging@44e7891:src/utils/merge_utils.py:38-46
and :122-142): ONE threshold over every merged language-model tensor, so the ``max(1, int(K * N))``
largest entries of the whole vector survive and a tensor whose task vector is small may lose all
of it.

How the global threshold is found without the whole vector in memory: an exact radix select over
the magnitudes' bit patterns. A non-negative IEEE float orders exactly as its bits read as an
integer, so the k-th largest magnitude is found 16 bits at a time: one streaming read per 16 bits
(two for float32 work, four for float64) builds a 65,536-bucket histogram of the next 16 bits among
the entries whose higher bits equal the prefix chosen so far. Memory is one histogram and one block
of rows, whatever the model size; the result is the exact k-th value (a histogram or quantile
sketch in one read would give an approximate threshold, and then not exactly K of the vector; per
tensor top-k candidates are exact but hold up to K * N values, gigabytes at 7B). The apply pass
then streams the tensors in write order with one shared count of entries equal to the threshold
still to keep, so ties are broken by position in that order and exactly k entries survive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlan.merge.methods import apply_trim, trim_threshold

if TYPE_CHECKING:
    import torch

DIGIT_BITS = 16
SCOPES = ("tensor", "global")


@dataclass
class Trim:
    """A magnitude threshold and how many entries equal to it may still be kept (consumed in order)."""

    threshold: torch.Tensor
    ties_left: int
    kept: int
    """k: how many entries of the trimmed vector survive."""
    total: int
    """n: how many entries the trimmed vector has."""

    def apply(self, delta: torch.Tensor) -> None:
        """Trim one block of the task vector in place (blocks must come in the order the ties are broken)."""
        self.ties_left = apply_trim(delta, self.threshold, self.ties_left)


def tensor_trim(magnitudes: torch.Tensor, density: float) -> Trim:
    """The per-tensor trim (mergekit's scope) from one tensor's flat |task vector|."""
    threshold, ties = trim_threshold(magnitudes, density)
    n = magnitudes.numel()
    return Trim(threshold, ties, max(1, int(density * n)), n)


def global_trim(
    blocks: Callable[[], Iterable[torch.Tensor]], density: float, dtype: torch.dtype, total: int
) -> Trim | None:
    """The one trim of a whole task vector of `total` entries whose flat |task vector| blocks `blocks()`
    yields (in `dtype`, float32 or float64); `blocks` is called once per 16 bits of the dtype, so the
    vector is read twice for float32. None when the vector is empty."""
    import torch

    bits, as_int = (64, torch.int64) if dtype == torch.float64 else (32, torch.int32)
    if total == 0:
        return None
    k = max(1, int(density * total))
    prefix, above = 0, 0  # bits chosen so far; entries known to be larger than any with that prefix
    for level in range(bits // DIGIT_BITS):
        shift = bits - DIGIT_BITS * (level + 1)
        hist = torch.zeros(1 << DIGIT_BITS, dtype=torch.int64)
        for block in blocks():
            x = block.contiguous().view(as_int)
            if level:
                x = x[(x >> (shift + DIGIT_BITS)) == prefix]
            hist += torch.bincount(((x >> shift) & 0xFFFF).long(), minlength=1 << DIGIT_BITS)
        at_least = hist.flip(0).cumsum(0).flip(0)  # entries whose digit is >= d
        need = k - above
        digit = int((at_least >= need).nonzero().max())
        above += int(at_least[digit] - hist[digit])
        prefix = (prefix << DIGIT_BITS) | digit
    threshold = torch.tensor([prefix], dtype=as_int).view(dtype)[0]
    return Trim(threshold, k - above, k, total)
