"""Padding-free text rows: `training.padding_free` resolved against the attention kernel, and the collator
wrapper that flattens a batch with no image into one row.

TRL's SFTTrainer has `padding_free`, but refuses it for any vision dataset (a mixed mixture is one), and
its vision collator has no padding-free mode. Text-only rows are most of an MLAN mixture and the batch
order makes most batches single-modality, so mlan flattens only the batches that hold no image row, with
TRL's own padding-free text collator (`DataCollatorForLanguageModeling(padding_free=True)`: rows
concatenated, position_ids restarting at 0 per row, no attention_mask, each row's first label ignored).
Image rows and mixed batches keep the padded path unchanged.

transformers (5.24) keeps packed rows apart from the position_ids alone when no attention_mask is given:
flash-attention kernels run them as variable-length sequences (`prepare_fa_kwargs_from_position_ids`);
`masking_utils` builds a block-diagonal causal mask for sdpa, eager and flex attention
(`find_packed_sequence_indices`). Only the flash kernels save attention work: with sdpa or eager the mask
spans the whole packed row, so attention grows with the square of the batch's total tokens.

Light to import (TRL inside the collator): the pre-flight checks resolve the setting before anything heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mlan.errors import MlanError

# Kernels that run packed rows as variable-length sequences: `auto` turns padding-free on with them.
VARLEN_KERNELS = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
# Kernels with which transformers keeps packed rows apart (its mask functions read position_ids).
PACKED_MASK_KERNELS = ("sdpa", "eager", "flex_attention")
# Per-token keys the flattening knows; a processor that returns others keeps the padded path.
FLAT_KEYS = {"input_ids", "attention_mask", "labels"}


@dataclass(frozen=True)
class PaddingFree:
    """What `training.padding_free` resolved to: the setting, whether text batches are flattened, with
    which attention kernel, and why (recorded in train_results.json and the model card; `reason` reads
    after "on" or "off")."""

    setting: str
    on: bool
    kernel: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_padding_free(setting: str, kernel: str | None, *, cuda: bool, wings: bool) -> PaddingFree:
    """`training.padding_free` (auto | on | off) for this run; `kernel` is the language model's attention
    implementation (needed unless the answer is off before it matters)."""
    if setting == "off":
        return PaddingFree(setting, False, kernel, "as set")
    if wings:
        # Wings' textual learner attends over every text token of a row from its own mask: rows flattened
        # into one would see each other.
        if setting == "on":
            raise MlanError(
                "training.padding_free on: not supported with Wings (its learners attend across the whole "
                "row, so packed rows would see each other); set auto or off"
            )
        return PaddingFree(setting, False, kernel, "Wings learners attend across the whole row")
    if setting == "auto" and not cuda:
        return PaddingFree(
            setting, False, kernel, "no variable-length attention kernel on a CPU: flattening only costs time"
        )
    if kernel in VARLEN_KERNELS:
        return PaddingFree(setting, True, kernel, f"{kernel} runs packed rows as variable-length sequences")
    if kernel not in PACKED_MASK_KERNELS:
        if setting == "on":
            raise MlanError(
                f"training.padding_free on: attention kernel {kernel!r} cannot keep packed rows apart "
                f"(set model.attn_implementation to one of {', '.join(VARLEN_KERNELS + PACKED_MASK_KERNELS)}, "
                "or padding_free auto/off)"
            )
        return PaddingFree(setting, False, kernel, f"{kernel} cannot keep packed rows apart")
    if setting == "on":
        return PaddingFree(setting, True, kernel, f"{kernel}, with a block-diagonal mask over the packed row")
    return PaddingFree(
        setting,
        False,
        kernel,
        f"{kernel} would attend over the whole packed row; a flash-attention kernel makes it pay",
    )


def default_kernel(config) -> str:
    """The attention kernel transformers chooses for this LLaVA config when the recipe names none, read
    from a weightless copy (its choice depends on the installed torch and kernels)."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    with init_empty_weights():
        meta = LlavaForConditionalGeneration._from_config(config)
    return meta.config.get_text_config()._attn_implementation


def has_image(example: dict[str, Any]) -> bool:
    """Whether a training row carries an image (TRL's `images` list or single `image`)."""
    return bool(example.get("images")) or example.get("image") is not None


class PaddingFreeText:
    """Wraps the training collator: a batch with no image row comes out as one padding-free row.

    The wrapped collator runs as always (chat template, assistant-only labels, image-token masking);
    its padded text batch is then flattened by TRL's padding-free text collator. A class rather than a
    closure so that DataLoader workers started with `spawn` can pickle it.
    """

    def __init__(self, collator, pad_token_id: int) -> None:
        self.collator = collator
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]):
        batch = self.collator(examples)
        if any(has_image(e) for e in examples) or set(batch) - FLAT_KEYS or "attention_mask" not in batch:
            return batch
        return flatten(batch, self.pad_token_id)


def flatten(batch: dict[str, Any], pad_token_id: int) -> dict[str, Any]:
    """A padded text batch as one row: the real tokens of each row (where attention_mask is 1, whichever
    side was padded) handed to TRL's padding-free collator, which adds position_ids, the sequence
    boundaries for varlen kernels (cu_seq_lens_*, max_length_*, seq_idx) and ignores each row's first label."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    keep = batch["attention_mask"].bool()
    rows = [
        {"input_ids": ids[m].tolist(), "labels": labels[m].tolist()}
        for ids, labels, m in zip(batch["input_ids"], batch["labels"], keep, strict=True)
    ]
    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(rows)
