"""What TRL's SFTConfig is given: the fields the recipe sets, each written once with the recipe field it
comes from; the defaults mlan adds unless `training.extra` sets them; the batch arithmetic; and the
process state SFTConfig sets up, which the batch arithmetic needs before SFTConfig exists.

Light on purpose (accelerate and TRL are imported inside the one function that needs them): the
pre-flight checks use the mapping before anything heavy is loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from mlan.config.recipe import SFTRecipe, TrainingSection
from mlan.errors import MlanError

log = logging.getLogger(__name__)


class Managed(NamedTuple):
    """An SFTConfig field the recipe sets: the recipe field it comes from (what `training.extra` is told
    to set instead) and its value."""

    source: str
    value: Any


# Older SFTConfig names of fields the recipe sets: transformers 5 renamed gradient_checkpointing
# (a deprecated alias that warns) and folded warmup_ratio into warmup_steps (a float below 1).
# `training.extra` may not set them either; they are never passed.
RENAMED = {"gradient_checkpointing": "activation_checkpointing", "warmup_ratio": "warmup_steps"}

# TrainingSection fields with no SFTConfig field of their own; a test checks that every other one is the
# source of a field in `managed_args`.
MLAN_ONLY = {
    "global_batch_size": "folded into gradient_accumulation_steps with the process count",
    "master_weights": "where updates are applied (mlan.train.precision): the model's dtype, mlan's optimizer",
    "deepspeed_config": "the DeepSpeed JSON handed over as `deepspeed` (mlan.train.engine)",
    "extra": "further SFTConfig fields, passed unchanged",
    "chat_template": "chooses the template the processor renders rows with (mlan.train.preflight)",
}


@dataclass(frozen=True)
class BatchShape:
    """Rows per optimizer step: per device x accumulated forward passes x processes."""

    per_device: int
    accumulation: int
    processes: int

    @property
    def global_size(self) -> int:
        return self.per_device * self.accumulation * self.processes


def batch_shape(t: TrainingSection, processes: int) -> BatchShape:
    """Rows per device and accumulation for this many processes: from `global_batch_size` when set, else
    `gradient_accumulation_steps` (default 1) at `per_device_train_batch_size`.

    A global batch that `per_device_train_batch_size` x processes does not divide is kept by taking fewer
    rows per device (the most that divide it), said in one line: a recipe's 64 rows per step with 4 per
    device then hold on 32 GPUs (2 per device) as on 8. A global batch smaller than the process count is
    one line."""
    accumulation = t.gradient_accumulation_steps or 1
    per_device = t.per_device_train_batch_size
    if t.global_batch_size is None:
        return BatchShape(per_device, accumulation, processes)
    if t.global_batch_size % processes:
        raise MlanError(
            f"training.global_batch_size {t.global_batch_size}: not a multiple of the {processes} processes "
            "(every process takes the same number of rows per step)"
        )
    fitted = max(d for d in range(1, per_device + 1) if (t.global_batch_size // processes) % d == 0)
    if fitted != per_device:
        log.info(
            "training.global_batch_size %d on %d processes: %d rows per device (per_device_train_batch_size %d "
            "does not divide %d rows per process)",
            t.global_batch_size,
            processes,
            fitted,
            per_device,
            t.global_batch_size // processes,
        )
    return BatchShape(fitted, t.global_batch_size // (fitted * processes), processes)


def managed_args(
    recipe: SFTRecipe,
    *,
    checkpoints: Path,
    precision: str,
    cuda: bool,
    batch: BatchShape,
    engine_args: dict[str, Any] | None = None,
) -> dict[str, Managed]:
    """Every SFTConfig field the recipe sets, with the recipe field it comes from. engine_args: the
    DeepSpeed or FSDP fields of the run's engine (mlan.train.engine.engine_args)."""
    t = recipe.training
    engine_args = engine_args or {}
    return {
        # The Trainer writes its checkpoints beside the output folder; the output folder is assembled at the end.
        "output_dir": Managed("output.dir", str(checkpoints)),
        # Rows were measured and the long ones dropped: nothing may be truncated (it would cut image tokens).
        "max_length": Managed("training.max_length", None),
        "assistant_only_loss": Managed("training.assistant_only_loss", t.assistant_only_loss),
        "learning_rate": Managed("training.learning_rate", t.learning_rate),
        "num_train_epochs": Managed("training.num_train_epochs", t.num_train_epochs),
        "max_steps": Managed("training.max_steps", t.max_steps or -1),
        "per_device_train_batch_size": Managed("training.per_device_train_batch_size", batch.per_device),
        "per_device_eval_batch_size": Managed("training.per_device_train_batch_size", batch.per_device),
        "gradient_accumulation_steps": Managed("training.gradient_accumulation_steps", batch.accumulation),
        "lr_scheduler_type": Managed("training.lr_scheduler_type", t.lr_scheduler_type),
        "warmup_steps": Managed("training.warmup_ratio", t.warmup_ratio),
        "weight_decay": Managed("training.weight_decay", t.weight_decay),
        "max_grad_norm": Managed("training.max_grad_norm", t.max_grad_norm),
        "seed": Managed("training.seed", t.seed),
        "data_seed": Managed("training.seed", t.seed),
        "bf16": Managed("training.precision", precision == "bf16"),
        "fp16": Managed("training.precision", precision == "fp16"),
        # FSDP must not be told to use the CPU: accelerate then trains plain DDP (mlan.train.engine).
        "use_cpu": Managed("training.precision", not cuda and "fsdp" not in engine_args),
        # The engine: a DeepSpeed JSON, or FSDP2 with the model's layer classes; None for one process / DDP.
        "deepspeed": Managed("training.engine", engine_args.get("deepspeed")),
        "fsdp": Managed("training.engine", engine_args.get("fsdp")),
        "fsdp_config": Managed("training.engine", engine_args.get("fsdp_config")),
        "activation_checkpointing": Managed("training.gradient_checkpointing", t.gradient_checkpointing),
        "report_to": Managed("training.report_to", t.report_to),
        "logging_steps": Managed("training.logging_steps", t.logging_steps),
        "logging_first_step": Managed("training.logging_steps", True),
        "save_strategy": Managed("training.save_steps", "steps"),
        "save_steps": Managed("training.save_steps", t.save_steps),
        "save_total_limit": Managed("training.save_total_limit", t.save_total_limit),
        "dataloader_num_workers": Managed("training.dataloader_num_workers", t.dataloader_num_workers),
        # The Trainer's random order for `batch_order: random`; llava and wide come from mlan's sampler
        # instead (MlanSFTTrainer._get_train_sampler).
        "train_sampling_strategy": Managed("training.batch_order", "random"),
        # TRL refuses its packing and padding_free for any dataset with images; mlan packs each batch in its
        # own collator wrapper instead (mlan.train.packing), so TRL's stay off.
        "packing": Managed("training.packing", False),
        "padding_free": Managed("training.packing", False),
    }


def managed_sources(managed: dict[str, Managed]) -> dict[str, str]:
    """SFTConfig field -> the recipe field that sets it, older names included: what `training.extra` may not set."""
    sources = {name: m.source for name, m in managed.items()}
    return sources | {old: sources[new] for old, new in RENAMED.items()}


def mlan_defaults(recipe: SFTRecipe, run_name: str) -> dict[str, Any]:
    """SFTConfig settings mlan adds; `training.extra`, passed after them, replaces any of them."""
    t = recipe.training
    defaults: dict[str, Any] = {"run_name": run_name}  # trackers name the run after the recipe
    if t.gradient_checkpointing and "gradient_checkpointing_kwargs" not in t.extra:
        # Non-reentrant unless `extra` sets the kwargs (under either name: the old one must not meet ours).
        defaults["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if recipe.wings is not None:
        # A text-only batch leaves the visual learners (and in stage 2 the router) without gradient,
        # which DDP must be told about.
        defaults["ddp_find_unused_parameters"] = True
    return defaults


def sft_config_kwargs(recipe: SFTRecipe, managed: dict[str, Managed], run_name: str) -> dict[str, Any]:
    """The SFTConfig keyword arguments: the managed fields, mlan's defaults, then `training.extra`."""
    return {
        **{name: m.value for name, m in managed.items()},
        **mlan_defaults(recipe, run_name),
        **recipe.training.extra,
    }


def process_state(extra: dict[str, Any], *, fsdp: bool = False):
    """accelerate's state of this process (index, count, main or not), started as SFTConfig would start it.

    The process count is needed before SFTConfig exists (it decides the gradient accumulation, one of
    SFTConfig's fields). PartialState starts the process group on its first call, and every later
    one, SFTConfig's included, keeps that group: so this passes what SFTConfig would pass (the CPU
    when no GPU is used, `ddp_backend`, on a GPU `ddp_timeout`), or a GPU run would wait at a barrier
    (the main process writing the output folder) for torch's default 10 minutes, not SFTConfig's 30.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from trl import SFTConfig

    default = {f.name: f.default for f in dataclasses.fields(SFTConfig)}
    backend = extra.get("ddp_backend", default["ddp_backend"])
    # use_cpu is `not cuda` (managed_args) but for FSDP; TrainingArguments also honours accelerate's CPU flag.
    if (not torch.cuda.is_available() and not fsdp) or parse_flag_from_env("ACCELERATE_USE_CPU"):
        return PartialState(cpu=True, backend=backend)
    timeout = timedelta(seconds=extra.get("ddp_timeout", default["ddp_timeout"]))
    return PartialState(backend=backend, timeout=timeout)
