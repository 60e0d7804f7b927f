"""The tensor maths of merging the original LLM back into a multimodal model's language model.

Every method has the paper's task-vector form with the multimodal model's weights as the base
and the original LLM as the one model added (Ratzlaff et al., arXiv 2412.03467):

    merged = theta_vlm + alpha * sparsify_K(theta_llm - theta_vlm)

- ``linear``: no sparsification; computed as ``(1 - alpha) * theta_vlm + alpha * theta_llm``, which
  equals the form above and is exact at both ends (alpha 1 gives the original LLM bit for bit).
- ``task_arithmetic``: no sparsification (density must be 1).
- ``ties``: keep the fraction K of the task vector with the largest magnitude (TIES' trim step).
  TIES' sign election chooses between the signs of several task vectors; with one added model
  every kept entry agrees with itself, so the election changes nothing and is not run.
- ``dare_linear`` / ``dare_ties``: drop each entry with probability 1 - K and rescale the kept ones
  by 1/K (DARE), so the expected task vector is unchanged. With one added model the two coincide
  for the same reason as above; both names are accepted because users know them from mergekit.

Why not call mergekit here (its formulas are the reference the tests compare against):
- it is not a runtime dependency of mlan (only of the benchmark), and pulls many packages;
- its TIES defaults to ``normalize=True``, which with a single added model divides the weighted
  task vector by its own weight and silently cancels alpha;
- its DARE draws masks from torch's global generator, so a tensor's mask depends on the order
  tensors are merged in; here each tensor has its own generator seeded from (seed, tensor name),
  so a merge is reproducible whatever the streaming order;
- its DARE rescales to the L1 norm of the dense task vector; DARE's 1/K keeps the expectation
  exactly, which is what the tests check;
- its magnitude trim argsorts the whole tensor (8-byte indices for every entry); a k-th value
  threshold needs far less memory on embedding-sized tensors.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

# The method names belong to the config layer (which validates them); the maths lives here.
from mlan.config.merge import METHODS, RANDOM_METHODS

if TYPE_CHECKING:
    import torch


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed from the merge seed and the tensor's name (stable across runs and orders)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def trim_threshold(magnitudes: torch.Tensor, density: float) -> tuple[torch.Tensor, int]:
    """TIES' trim over a flat tensor of |task vector| entries: the k-th largest magnitude, with
    ``k = max(1, int(density * n))`` (mergekit's count), and how many entries equal to it are kept
    so that exactly k survive (ties at the threshold are broken by position, first ones kept)."""
    import torch

    n = magnitudes.numel()
    k = max(1, int(density * n))
    threshold = torch.kthvalue(magnitudes, n - k + 1).values
    return threshold, k - int((magnitudes > threshold).sum())


def apply_trim(delta: torch.Tensor, threshold: torch.Tensor, ties_left: int) -> int:
    """Zero the entries of ``delta`` below the threshold, in place, keeping at most ``ties_left``
    entries equal to it (the first ones); returns how many tied entries may still be kept after it.
    Applied block by block in order, it gives exactly what one pass over the whole tensor gives."""
    flat = delta.view(-1)
    mag = flat.abs()
    keep = mag > threshold
    if ties_left > 0:
        tied = (mag == threshold).nonzero().view(-1)[:ties_left]
        keep[tied] = True
        ties_left -= tied.numel()
    del mag
    flat.mul_(keep)
    return ties_left


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``max(1, int(density * n))`` entries of largest magnitude, in place."""
    if density >= 1 or delta.numel() == 0:
        return delta
    threshold, ties = trim_threshold(delta.abs().view(-1), density)
    apply_trim(delta, threshold, ties)
    return delta


def task_vector(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``other - base`` in float32 (float64 stays float64): the original LLM's task vector."""
    import torch

    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    return torch.sub(other.to(work), base.to(work))


def add_task_vector(base: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """``base + alpha * delta`` in the base's dtype, reusing ``delta``'s buffer."""
    return delta.mul_(alpha).add_(base.to(delta.dtype)).to(base.dtype)


def random_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` and rescale kept ones by 1/density, in place."""
    import torch

    if density >= 1 or delta.numel() == 0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return delta.mul_(keep).div_(density)


def merge_tensor(
    base: torch.Tensor,
    other: torch.Tensor,
    method: str,
    alpha: float,
    density: float = 1.0,
    seed: int = 0,
    name: str = "",
) -> torch.Tensor:
    """Merge one tensor: ``base + alpha * sparsify_density(other - base)`` in the base's dtype.

    ``base`` is the multimodal model's tensor (theta_vlm), ``other`` the original LLM's
    (theta_llm), of the same shape. Arithmetic runs in float32 (float64 stays float64), so half
    precision checkpoints are not rounded twice. ``seed`` and ``name`` seed DARE's mask. Inputs are
    never modified.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r} (expected one of {', '.join(METHODS)})")
    if base.shape != other.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(base.shape)} vs {tuple(other.shape)}")
    if method == "linear":
        # (1 - alpha) * b + alpha * o, written so that alpha 0 and alpha 1 are exact.
        work = torch.float64 if base.dtype == torch.float64 else torch.float32
        out = torch.mul(other.to(work), alpha).add_(base.to(work), alpha=1.0 - alpha)
        return out.to(base.dtype)
    delta = task_vector(base, other)
    if method == "ties":
        magnitude_trim(delta, density)
    elif method in RANDOM_METHODS:
        gen = torch.Generator().manual_seed(tensor_seed(seed, name))
        random_drop(delta, density, gen)
    # delta becomes the result in place: one full-size buffer fewer at the peak.
    return add_task_vector(base, delta, alpha)
