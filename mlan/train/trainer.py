"""The Trainer mlan trains with, and its assembly from the prepared pieces.

`MlanSFTTrainer` is TRL's SFTTrainer with the recipe's batch order (mlan.train.sampler), the Wings
optimizer groups, and resuming that loads a LLaVA checkpoint's weights whatever their key layout.
The collator wrapper keeps image placeholder tokens out of the loss; `build_trainer` puts model,
arguments, rows, collator and mlan's progress display together.

TRL is imported at the top (seconds): `run_sft` imports this module only when the training starts,
after the pre-flight checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers.integrations import TensorBoardCallback
from trl import SFTTrainer

from mlan.config.recipe import SFTRecipe
from mlan.errors import MlanError
from mlan.images import PadImages, mean_colour
from mlan.train.checkpoint import TENSORBOARD_DIR, checkpoint_weight_files, load_checkpoint, unwrapped_name
from mlan.train.data import PreparedSplit
from mlan.train.lockstep import install_lockstep
from mlan.train.model import ModelToTrain, upcast_trainable
from mlan.train.packing import STATS_KEY, InBatchPacking, attention_weight
from mlan.train.preflight import Checked
from mlan.train.progress import use_mlan_progress
from mlan.train.sampler import ModalityLengthGroupedSampler
from mlan.train.timing import StepTimer, TimedCollator


class ImageTokenMasking:
    """Wraps TRL's collator so `<image>` placeholder tokens never count as targets.

    With assistant-only loss they are masked already; without it TRL keeps them as labels
    (576 per image at LLaVA-1.5 scale), which trains the model to predict placeholders.
    A class rather than a closure so that DataLoader workers started with `spawn` can pickle it.
    """

    def __init__(self, collator, image_token_id: int) -> None:
        self.collator = collator
        self.image_token_id = image_token_id

    def __call__(self, examples):
        batch = self.collator(examples)
        batch["labels"][batch["input_ids"] == self.image_token_id] = -100
        return batch


def image_token_masking(collator, image_token_id: int) -> ImageTokenMasking:
    """TRL's collator with image placeholder tokens masked out of the labels."""
    return ImageTokenMasking(collator, image_token_id)


def logits_loss(outputs, labels, num_items_in_batch=None):
    """The causal-LM loss from the model's own logits: summed over the target tokens (labels shifted by one,
    -100 ignored), divided by the step's target tokens (`num_items_in_batch`, all processes' and micro-batches')
    or this batch's. What TRL's fused LM head computes, through the LM head module instead.

    Under FSDP2 TRL's fused head reads `lm_head.weight` while it is still a sharded DTensor and gathers it with
    `full_tensor()`, whose backward keeps each process's own gradient for its shard without summing the
    processes': the head's gradient came out wrong (on the tiny LLaVA, grad norm 4.13 instead of 3.86 at
    step 1). Given a loss function, TRL runs the model's own forward, whose LM head FSDP2 gathers and reduces
    itself (and the fused head only without gradient, for its metrics)."""
    import torch.nn.functional as F

    logits = outputs.logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum().clamp(min=1)
    return loss / count


class MlanSFTTrainer(SFTTrainer):
    """SFTTrainer with the recipe's batch order (on the Trainer's sampler hook), the Wings optimizer
    groups, and LLaVA-aware resuming.

    row_lengths / row_has_image: per train row, for the sampler (row_lengths None: the Trainer's
    own random sampler); batch_order: `llava` or `wide` (mlan.train.sampler). wings_groups: the stage's
    optimizer groups (`wings_parameter_groups`), or None.

    `_get_train_sampler`, `_run_epoch` and `_load_from_checkpoint` are private Trainer methods:
    check them when transformers is upgraded.
    """

    def __init__(
        self,
        *args,
        row_lengths=None,
        row_has_image=None,
        batch_order="llava",
        wings_groups=None,
        kahan=False,
        **kwargs,
    ):
        self.step_timer: StepTimer | None = None  # set by `build_trainer`
        self._row_lengths = row_lengths
        self._batch_order = batch_order
        self._row_has_image = row_has_image
        self._wings_groups = None
        self._kahan = kahan
        # Summed counts of the packed training batches (mlan.train.packing.STATS_KEY), this process's.
        self.packing_stats = [0, 0, 0, 0]
        self.eval_collator = None  # set by `build_trainer` when training batches are packed
        if wings_groups is not None:
            # Groups by parameter name, taken before any wrapping: FSDP2 replaces the parameter
            # objects when it shards the model, before the Trainer creates the optimizer.
            model = kwargs.get("model", args[0] if args else None)
            names = {id(p): n for n, p in model.named_parameters()}
            self._wings_groups = [{**g, "params": {names[id(p)] for p in g["params"]}} for g in wings_groups]
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        # Wings trains each part at its own rate: only the groups are ours, split by weight decay as the
        # Trainer splits them, so its scheduler scales every group's own rate; the Trainer's optimizer and
        # kwargs (`optim`, betas, eps...) are kept. `master_weights: kahan` swaps in torch-optimi's AdamW with
        # Kahan summation (no `optim` of the Trainer's names is one) with the Trainer's hyperparameters.
        if (self._wings_groups is None and not self._kahan) or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = (
            self._wings_param_groups(opt_model) if self._wings_groups is not None else self._decay_groups(opt_model)
        )
        if self._kahan:
            from optimi import AdamW

            a = self.args
            self.optimizer = AdamW(
                groups,
                lr=a.learning_rate,
                betas=(a.adam_beta1, a.adam_beta2),
                eps=a.adam_epsilon,
                weight_decay=a.weight_decay,
                kahan_sum=True,
            )
            return self.optimizer
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or {
            "params",
            "model",
            "optimizer_dict",
        } & set(kwargs):
            raise MlanError(f"training.extra.optim {self.args.optim}: not supported with Wings (use an AdamW variant)")
        self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def _decay_groups(self, opt_model) -> list[dict[str, Any]]:
        """The trainable parameters split by weight decay, as the Trainer splits them."""
        decay = set(self.get_decay_parameter_names(opt_model))
        return self._split_by_decay([(n, p) for n, p in opt_model.named_parameters() if p.requires_grad], decay)

    def _wings_param_groups(self, opt_model) -> list[dict[str, Any]]:
        """The Wings groups over the (possibly wrapped) model's parameters, each split by weight decay."""
        decay = set(self.get_decay_parameter_names(opt_model))
        by_name = {unwrapped_name(n): (n, p) for n, p in opt_model.named_parameters()}
        groups = []
        for g in self._wings_groups:
            lost = sorted(g["params"] - by_name.keys())
            if lost:
                raise MlanError(
                    f"wings: parameter {lost[0]} is not found in the wrapped model (FSDP1 without "
                    "use_orig_params flattens parameters; use FSDP2, DeepSpeed or DDP)"
                )
            own = [by_name[n] for n in sorted(g["params"])]
            groups += self._split_by_decay(own, decay, name=g["name"], lr=g["lr"])
        return groups

    def _split_by_decay(self, named, decay: set[str], **group) -> list[dict[str, Any]]:
        """(name, parameter) pairs as an optimizer group with the Trainer's weight decay and one without (the
        names in `decay` decay), each with `group`'s keys, a named group's second called `<name>_no_decay`;
        empty groups left out."""
        out = []
        for suffix, weight_decay, decayed in (("", self.args.weight_decay, True), ("_no_decay", 0.0, False)):
            params = [p for n, p in named if (n in decay) == decayed]
            if params:
                named_group = {"name": group["name"] + suffix} if "name" in group else {}
                out.append({**group, **named_group, "params": params, "weight_decay": weight_decay})
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # A packed batch carries its counts, which are no model input: taken out here, summed for the summary.
        stats = inputs.pop(STATS_KEY, None)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if stats is not None and self.model.training:
            stats = stats.tolist()
            self.packing_stats = [a + b for a, b in zip(self.packing_stats, stats, strict=True)]
            # TRL counts a batch without attention_mask as one packed row of `position_ids.size(1)` tokens
            # (its own padding-free layout); mlan's has several bins and a padded tail: its real tokens are
            # counted instead, so the progress display's tokens/s stays true. `_total_train_tokens` is TRL's.
            extra = torch.tensor(stats[2] - inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(extra).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return out

    def get_eval_dataloader(self, eval_dataset=None):
        # The Trainer collates evaluation batches with `data_collator` too: padded ones instead (see build_trainer).
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        packed, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = packed

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The Trainer fetches one optimizer step's batches here, before `on_step_begin`: the step timer's data part.
        if self.step_timer is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        return self.step_timer.fetch(
            lambda: super(MlanSFTTrainer, self).get_batch_samples(epoch_iterator, num_batches, device)
        )

    def _get_train_sampler(self, train_dataset=None):
        if self._row_lengths is None:
            return super()._get_train_sampler(train_dataset)
        self._mlan_sampler = ModalityLengthGroupedSampler(
            self._row_lengths,
            self._row_has_image,
            per_device_batch=self.args.per_device_train_batch_size,
            world_size=self.args.world_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            order=self._batch_order,
            accumulation=self.args.gradient_accumulation_steps,
        )
        return self._mlan_sampler

    def _run_epoch(self, *args, **kwargs):
        # Under DDP accelerate wraps the batch sampler in a BatchSamplerShard, through which
        # neither accelerate nor the Trainer forwards set_epoch: every epoch would repeat the
        # first epoch's order. Set it here, where the Trainer names the epoch it starts.
        sampler = getattr(self, "_mlan_sampler", None)
        if sampler is not None and "epoch" in kwargs:
            sampler.set_epoch(int(kwargs["epoch"]))
        return super()._run_epoch(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # The Trainer's own loading silently loads nothing into a LLaVA model (see checkpoint.py):
        # a plain model's weights are loaded here; sharded and PEFT models go the Trainer's way.
        model = model if model is not None else self.model
        folder = Path(resume_from_checkpoint)
        plain = not (self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(model, "peft_config"))
        if not plain or not checkpoint_weight_files(folder):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint(model, folder)


def build_trainer(
    recipe: SFTRecipe, checked: Checked, sft_args, to_train: ModelToTrain, train: PreparedSplit, ckpt_dir: Path
) -> MlanSFTTrainer:
    """The trainer for this run: the model on the train rows, with image tokens masked out of the
    labels, batches grouped as the recipe says, and mlan's progress display."""
    info = checked.info
    trainer = MlanSFTTrainer(
        model=to_train.model,
        args=sft_args,
        train_dataset=train.dataset,
        processing_class=info.processor,
        peft_config=to_train.peft_config,
        row_lengths=None if recipe.training.batch_order == "random" else train.lengths,
        row_has_image=train.has_image,
        batch_order=recipe.training.batch_order,
        wings_groups=to_train.wings_groups,
        kahan=checked.plan.optimizer == "optimi_kahan",
        compute_loss_func=logits_loss if checked.engine.fsdp else None,
    )
    masked = image_token_masking(trainer.data_collator, info.image_token_id)
    trainer.step_timer = StepTimer()
    trainer.add_callback(trainer.step_timer)

    def outer(collator):
        collator = TimedCollator(collator, trainer.step_timer)
        if recipe.data.image_aspect_ratio == "pad":
            # LLaVA's `image_aspect_ratio: pad`: square images in the processor's mean colour (mlan.images).
            collator = PadImages(collator, mean_colour(info.processor))
        return collator

    trainer.data_collator = outer(masked)
    if checked.packing.on:
        # Every training batch's rows packed without padding (mlan.train.packing); evaluation keeps padded
        # batches, whose loss the Trainer averages weighted by rows per batch (a packed batch has fewer).
        weight = None if checked.packing.bins == "one_row" else attention_weight(info.config.get_text_config())
        trainer.eval_collator = trainer.data_collator
        trainer.data_collator = outer(InBatchPacking(masked, info.processor.tokenizer.pad_token_id, weight))
    set_up_reporting(trainer, ckpt_dir)
    if checked.engine.sharded:
        # Every process gathers the same weights every step, images or not (mlan.train.lockstep).
        install_lockstep(to_train.model, info.processor)
    if checked.plan.master == "fp32":
        # fp32 masters on one process or DDP: every trainable parameter in fp32 under 16-bit autocast
        # (mlan.train.precision), LoRA's `modules_to_save` copies and Wings' learners included. TRL casts the
        # trainable parameters of a quantized model to bf16 (the QLoRA paper's choice): they come back too.
        upcast_trainable(trainer.model)
    return trainer


def set_up_reporting(trainer, ckpt_dir: Path) -> None:
    """mlan's progress display instead of the Trainer's printed dicts; TensorBoard logs beside the checkpoints."""
    use_mlan_progress(trainer)
    for cb in trainer.callback_handler.callbacks:
        # Its default is a timestamped folder under the checkpoint folder; TENSORBOARD_LOGGING_DIR still wins.
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(ckpt_dir / TENSORBOARD_DIR)


def close_tensorboard(trainer) -> None:
    """Close TensorBoard's writer before its folder moves into the output folder: the final
    evaluation is logged after training closed it, which reopens it."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
            cb.tb_writer.close()
            cb.tb_writer = None
