"""In-batch packing: `training.packing` resolved against the attention kernel, and the collator wrapper that
packs each batch's rows, image rows included, into as few rows ("bins") as fit, without padding.

Why by hand: TRL's SFTTrainer refuses `packing` and `padding_free` for any dataset with images, and its
padding-free collator is text only; LLaVA groups batches by modality; InternVL and LLaMA-Factory pack
offline, which changes which rows each step sees (../shared/reference/packing.md). mlan keeps the batches
the sampler drew (any `batch_order`) and only stops computing their padding, so every optimizer step sees
the same rows with the same loss as the padded batch: the optimisation is unchanged.

How: the training collator runs as always (chat template, assistant-only labels, image-token masking,
image processing); its padded batch is then repacked. Each row keeps its own `position_ids` from 0 and
there is no attention_mask, from which transformers (5.24) keeps the rows apart: flash-attention kernels
run them as variable-length sequences (`prepare_fa_kwargs_from_position_ids`, batch size 1 only), and
`masking_utils.find_packed_sequence_indices` gives sdpa, eager and flex attention a block-diagonal causal
mask. Only `position_ids` travel, never `cu_seq_lens_*`: LLaVA hands extra kwargs to the vision tower too.

- A flash kernel: the whole batch is one row (attention costs each row's own square).
- sdpa, eager, flex: the mask is dense over a bin (a bin of W positions costs W^2 attention), so the bin
  length is chosen per batch by cost: bins by first-fit decreasing at 1, 2, 3 or 4 times the batch's
  longest row or all in one, whichever costs the fewest multiply-adds (`plan_bins`: linear layers per
  position plus attention per pair of positions, from the language model's sizes). A small model on long
  rows is attention-bound and keeps bins of the longest row (never more attention than the padded batch);
  a 7B model's linear layers dominate, so it fills longer bins.

The loss is the padded batch's: each row's first label is ignored (in the padded batch nothing predicts
it either), so the same tokens count and the Trainer's token count (`labels[..., 1:]`) is the same.
Images are reordered with their rows, so LLaVA's in-order scatter puts every row's features on its own
placeholders.

Light to import (torch inside the functions): the pre-flight checks resolve the setting before anything heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import accumulate
from typing import Any

from mlan.errors import MlanError

# Kernels that run packed rows as variable-length sequences: each batch becomes one row.
VARLEN_KERNELS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
# Kernels with which transformers keeps packed rows apart through a block-diagonal mask.
PACKED_MASK_KERNELS = ("sdpa", "eager", "flex_attention")
# Per-image keys the packing reorders with their rows (LLaVA: pixel_values; LLaVA-NeXT, -OneVision: also image_sizes).
IMAGE_KEYS = ("pixel_values", "image_sizes")
# LLaVA-OneVision's images per row that has any (it tiles a row's image only when it is alone).
ROW_IMAGES_KEY = "batch_num_images"
# The collator's keys packing knows; any other stops the run with one line instead of being dropped.
KNOWN_KEYS = {"input_ids", "attention_mask", "labels", ROW_IMAGES_KEY, *IMAGE_KEYS}
# Where a packed batch carries its counts to the trainer (MlanSFTTrainer.compute_loss takes it out before the
# forward): [padded positions, packed positions, real tokens, rows]. In the batch, not in the collator, so that
# the counts reach the main process when dataloader workers collate.
STATS_KEY = "mlan_packing_stats"


@dataclass(frozen=True)
class Packing:
    """What `training.packing` resolved to: the setting, whether batches are packed, with which attention
    kernel, the bins (`one_row`, or `by_cost`: see plan_bins), and why (recorded in train_results.json and the
    model card; `reason` reads after "on" or "off")."""

    setting: str
    on: bool
    kernel: str | None
    bins: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_packing(setting: str, kernel: str | None, *, wings: bool, mrope: bool = False) -> Packing:
    """`training.packing` (auto | in_batch | off) for this run; `kernel` is the language model's attention
    implementation (needed unless the answer is off before it matters); `mrope`: the model places tokens
    with 3-D positions (Qwen2.5-VL's M-RoPE), which position ids restarting per row cannot express."""
    if setting == "off":
        return Packing(setting, False, kernel, None, "as set")
    if mrope:
        if setting == "in_batch":
            raise MlanError(
                "training.packing in_batch: not supported with Qwen2.5-VL (its M-RoPE places image tokens with "
                "3-D positions, which packed rows' position ids cannot carry); set auto or off"
            )
        return Packing(setting, False, kernel, None, "M-RoPE's 3-D positions cannot be packed")
    if wings:
        # Wings' textual learner attends over every text token of a row from its own mask: rows packed
        # into one would see each other.
        if setting == "in_batch":
            raise MlanError(
                "training.packing in_batch: not supported with Wings (its learners attend across the whole "
                "row, so packed rows would see each other); set auto or off"
            )
        return Packing(setting, False, kernel, None, "Wings' learners attend across the whole row")
    if kernel in VARLEN_KERNELS:
        return Packing(setting, True, kernel, "one_row", f"{kernel} runs each batch as one row of variable-length rows")
    if kernel in PACKED_MASK_KERNELS:
        return Packing(setting, True, kernel, "by_cost", f"{kernel}, block-diagonal over bins sized by cost per batch")
    if setting == "in_batch":
        raise MlanError(
            f"training.packing in_batch: attention kernel {kernel!r} cannot keep packed rows apart "
            f"(set model.attn_implementation to one of {', '.join(VARLEN_KERNELS + PACKED_MASK_KERNELS)}, "
            "or packing auto/off)"
        )
    return Packing(setting, False, kernel, None, f"{kernel} cannot keep packed rows apart")


def default_kernel(config, model_class=None) -> str:
    """The attention kernel transformers chooses for this multimodal config (a LLaVA's by default) when the
    recipe names none, read from a weightless copy (its choice depends on the installed torch and kernels)."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    with init_empty_weights():
        meta = (model_class or LlavaForConditionalGeneration)._from_config(config)
    return meta.config.get_text_config()._attn_implementation


def image_count(example: dict[str, Any]) -> int:
    """Images in a training row (TRL's `images` list or single `image`)."""
    if example.get("images"):
        return len(example["images"])
    return int(example.get("image") is not None)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices in bins of at most `capacity` tokens: longest rows first, each into the first bin with
    room (ties by index, so the packing is deterministic)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def attention_weight(text_config) -> float:
    """Multiply-adds of attention per pair of positions, relative to those of the linear layers per position,
    for one decoder layer: 2d for QK^T and AV against the q/o (d x d), k/v (d x d_kv) and gated MLP (3 d x
    d_ff) projections."""
    d = text_config.hidden_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    linear = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim + 3 * d * text_config.intermediate_size
    return 2 * heads * head_dim / linear


def bin_lengths(lengths: list[int]) -> list[int]:
    """The bin lengths `plan_bins` tries: 1-4 times the longest row, and all rows in one bin."""
    longest, total = max(lengths), sum(lengths)
    return sorted({min(k * longest, total) for k in (1, 2, 3, 4)} | {total})


def plan_bins(lengths: list[int], weight: float) -> list[list[int]]:
    """Bins for one batch: first-fit decreasing at each of `bin_lengths`, the cheapest by
    `bins x W x (1 + weight x W)` for bins of width W (ties: the shorter bins)."""
    best: tuple[float, list[list[int]]] | None = None
    for capacity in bin_lengths(lengths):
        bins = first_fit_decreasing(lengths, capacity)
        width = max(sum(lengths[i] for i in b) for b in bins)
        cost = len(bins) * width * (1 + weight * width)
        if best is None or cost < best[0]:
            best = (cost, bins)
    return best[1]


class InBatchPacking:
    """Wraps the training collator: its padded batch comes out packed (see the module's docstring).
    A class rather than a closure so that DataLoader workers started with `spawn` can pickle it."""

    def __init__(self, collator, pad_token_id: int, weight: float | None) -> None:
        self.collator = collator
        self.pad_token_id = pad_token_id
        self.weight = weight  # None: one row (flash kernels); else `plan_bins`' attention weight

    def __call__(self, examples: list[dict[str, Any]]):
        batch = self.collator(examples)
        return pack(batch, [image_count(e) for e in examples], self.pad_token_id, weight=self.weight)


def pack(
    batch: dict[str, Any], images_per_row: list[int], pad_token_id: int, *, weight: float | None
) -> dict[str, Any]:
    """A padded batch (input_ids, attention_mask, labels, per-image tensors) as packed bins with
    position_ids and no attention_mask (weight None: one row; else bins by `plan_bins`); the counts under
    STATS_KEY."""
    import torch

    unknown = sorted(set(batch) - KNOWN_KEYS)
    if unknown:
        raise MlanError(
            f"training.packing: the collator returned {unknown[0]!r}, which in-batch packing cannot place; "
            "set training.packing off"
        )
    keep = batch["attention_mask"].bool()  # real tokens, whichever side was padded
    ids = [row[m] for row, m in zip(batch["input_ids"], keep, strict=True)]
    labels = [row[m].clone() for row, m in zip(batch["labels"], keep, strict=True)]
    for row in labels:
        row[0] = -100  # nothing before it predicts it, in the padded batch either
    lengths = [len(row) for row in ids]
    bins = [list(range(len(ids)))] if weight is None else plan_bins(lengths, weight)
    width = max(sum(lengths[i] for i in b) for b in bins)
    out_ids = torch.full((len(bins), width), pad_token_id, dtype=batch["input_ids"].dtype)
    out_labels = torch.full((len(bins), width), -100, dtype=batch["labels"].dtype)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    for b, rows in enumerate(bins):
        at = 0
        for i in rows:
            out_ids[b, at : at + lengths[i]] = ids[i]
            out_labels[b, at : at + lengths[i]] = labels[i]
            positions[b, at : at + lengths[i]] = torch.arange(lengths[i])
            at += lengths[i]
        # The bin's padding is a sequence of its own (positions from 0), attending to itself only.
        positions[b, at:] = torch.arange(width - at)
    packed = {"input_ids": out_ids, "labels": out_labels, "position_ids": positions}
    order = [i for rows in bins for i in rows]
    if any(k in batch for k in IMAGE_KEYS):
        starts = list(accumulate(images_per_row, initial=0))  # each row's first image
        n_images = sum(images_per_row)
        if any(len(batch[k]) != n_images for k in IMAGE_KEYS if k in batch):
            raise ValueError(f"packing: {n_images} images in the rows, but the collator's image tensors differ")
        image_order = torch.tensor([starts[i] + j for i in order for j in range(images_per_row[i])], dtype=torch.long)
        for k in IMAGE_KEYS:
            if k in batch:
                packed[k] = batch[k][image_order]
        if ROW_IMAGES_KEY in batch:
            if batch[ROW_IMAGES_KEY].tolist() != [n for n in images_per_row if n]:
                raise ValueError(f"packing: {ROW_IMAGES_KEY} does not match the rows' images")
            packed[ROW_IMAGES_KEY] = torch.tensor([images_per_row[i] for i in order if images_per_row[i]])
    packed[STATS_KEY] = torch.tensor([batch["input_ids"].numel(), out_ids.numel(), sum(lengths), len(lengths)])
    return packed


def padding_saved(stats: list[int] | None) -> dict[str, Any] | None:
    """The run's packing counts as a record: positions padded vs packed, real tokens, and each one's padding
    share. None when no batch was packed."""
    if not stats or not stats[3]:
        return None
    padded, packed, real, rows = stats
    return {
        "rows": rows,
        "real_tokens": real,
        "padded_positions": padded,
        "packed_positions": packed,
        "padding_padded": round(1 - real / padded, 4),
        "padding_packed": round(1 - real / packed, 4),
    }


def describe_packing(packing: dict[str, Any]) -> str:
    """One line for a summary: on or off and why, and on, the padding share before and after packing."""
    line = ("on" if packing.get("on") else "off") + f" ({packing.get('reason')})"
    saved = packing.get("saved")
    if saved:
        line += (
            f": padding {saved['padding_padded']:.0%} of the padded batches' positions, "
            f"{saved['padding_packed']:.0%} packed ({saved['packed_positions'] / saved['padded_positions']:.2f}x positions)"
        )
    return line
