"""`run_sft`: fine-tune a LLaVA-style model on a mixture with TRL's SFTTrainer.

The main of a run, in the order it happens, each step in its own module:
1. pre-flight (`preflight`): every input is checked before any weights load (mixture, model and
   processor, max length, LoRA targets, Wings, trackers, precision, batch, `training.extra`,
   checkpoints to resume);
2. rows (`data`): measured exactly, over-long ones dropped and counted;
3. model (`model`): loaded, then LoRA, Wings or frozen components as the recipe says;
4. trainer (`arguments`, `trainer`): the SFTConfig the recipe maps to, mlan's SFTTrainer;
5. train, evaluate, save; the output folder (`outputs`) assembled by the main process.

Checkpoints go to `<output>.checkpoints/` beside the output folder (`checkpoint`), so a killed run
leaves them for `--resume` while the output folder itself only ever appears complete.

The same function runs under `accelerate launch` (DDP, FSDP, DeepSpeed): every process calls it,
the Trainer shards the batches, the main process writes the output folder.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan.config.recipe import SFTRecipe
from mlan.io import check_output_dir
from mlan.runs import run_dir
from mlan.train.checkpoint import checkpoint_dir, rank_checksums, start_checkpoints
from mlan.train.data import training_rows
from mlan.train.engine import check_engaged, start_deepspeed_comm
from mlan.train.freeze import parameter_report
from mlan.train.model import model_to_train
from mlan.train.outputs import loss_log, write_output
from mlan.train.packing import padding_saved
from mlan.train.preflight import preflight

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    """What one SFT run produced (also written to `train_results.json` in the output folder)."""

    output_dir: Path
    steps: int
    train_loss: float | None
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    runtime_s: float
    parameters: dict[str, dict[str, int]]
    rows: dict[str, int]
    world_size: int
    global_batch_size: int
    gradient_accumulation_steps: int
    precision: str
    # The engine that ran ({name, label, zero_stage, offload, source, config_file}: mlan.train.engine), where the
    # master weights lived (mlan.train.precision) and the estimated bytes per device of that plan.
    engine: dict[str, Any] = field(default_factory=dict)
    precision_plan: dict[str, Any] = field(default_factory=dict)
    memory_estimate: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    merged_dir: Path | None = None
    rank_checksums: list[str] = field(default_factory=list)
    # `training.packing` as resolved, {setting, on, kernel, bins, reason}, and what it saved on this process:
    # {rows, real_tokens, padded_positions, packed_positions, padding_padded, padding_packed} (mlan.train.packing).
    packing: dict[str, Any] = field(default_factory=dict)
    # This process's step time in parts: {steps, total_s, seconds, fractions, collate_s} (mlan.train.timing).
    step_time_split: dict[str, Any] | None = None
    is_main_process: bool = True

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        d = dataclasses.asdict(self)
        d["output_dir"] = str(self.output_dir)
        d["merged_dir"] = str(self.merged_dir) if self.merged_dir else None
        d.pop("is_main_process")
        return d


def output_dir(recipe: SFTRecipe) -> Path:
    """The run's output folder: `output.dir`, or `runs/<name>` (where eval and merge look by default)."""
    if recipe.output.dir:
        return Path(recipe.output.dir).expanduser()
    return run_dir(recipe.name or "sft")


def run_sft(
    recipe: SFTRecipe, *, resume: bool | None = None, overwrite: bool = False, callbacks: Sequence[Any] = ()
) -> SFTResult:
    """Fine-tune `recipe.model` on `recipe.data` as the recipe says; returns what was produced.

    resume: None resumes from the last complete checkpoint of this recipe's run when there is
    one; True requires one; False discards old checkpoints and starts over. overwrite: replace an
    existing output folder. callbacks: extra `TrainerCallback`s (benchmarks measure through them). Under `accelerate launch` every process calls this; only the main
    process writes the output folder (its result has `is_main_process=True`).
    """
    out = output_dir(recipe)
    ckpt_dir = checkpoint_dir(out)
    check_output_dir(out, overwrite)
    checked = preflight(recipe, out=out, ckpt_dir=ckpt_dir, resume=resume)  # every check that can fail on user input
    train, val = training_rows(recipe, checked.mixture, checked.mixture_dir, checked.info)

    # ---- trainer. Imported here, not at the top: TRL takes seconds to import, and mlan.lab.run
    # imports this module at its top.
    from accelerate import PartialState
    from trl import SFTConfig

    from mlan.train.trainer import build_trainer, close_tensorboard

    info = checked.info
    info.processor.chat_template = info.chat_template
    sft_args = SFTConfig(**checked.sft_args)
    state = PartialState()  # this process's place in the run, as SFTConfig set it up
    start_checkpoints(checked.record, ckpt_dir, checked.resume_from, state)
    start_deepspeed_comm(checked.engine, state)
    to_train = model_to_train(recipe, info, checked.cuda, state.local_process_index, checked.plan.load_dtype)
    # Under ZeRO-3 the weights were loaded straight into their partitions (no process held the whole model).
    partitioned = any(hasattr(p, "ds_id") for p in to_train.model.parameters())
    trainer = build_trainer(recipe, checked, sft_args, to_train, train, ckpt_dir)
    check_engaged(trainer, checked.engine)  # no silent fallback to DDP (mlan.train.engine)
    for callback in callbacks:
        trainer.add_callback(callback)
    params = parameter_report(trainer.model)
    plan_line = checked.plan.describe(checked.engine)
    if state.is_main_process:
        for comp, c in params.items():
            log.info("parameters %-15s %14s trainable of %14s", comp, f"{c['trainable']:,}", f"{c['total']:,}")
        log.info("engine: %s, %d process(es); %s", checked.engine.label(), state.num_processes, plan_line)
    resume_from = checked.resume_from
    if resume_from is not None and state.is_main_process:
        log.info("resuming from %s", resume_from)

    # ---- train, evaluate, save
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_loss = None
    if val is not None:
        eval_loss = float(trainer.evaluate(eval_dataset=val.dataset)["eval_loss"])
    close_tensorboard(trainer)
    checksums = rank_checksums(trainer, state.num_processes)
    final_dir = ckpt_dir / "final"
    # Recorded where LLaVA keeps it (llava/train/train.py:904), for evaluation's `image_aspect_ratio: model`.
    to_train.model.config.image_aspect_ratio = recipe.data.image_aspect_ratio
    if trainer.is_fsdp_enabled:
        # Checkpoints are sharded (resumable); the output is one full state dict a plain from_pretrained
        # reads. With SHARDED_STATE_DICT the Trainer's save_model writes nothing at all.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(final_dir))  # collective under FSDP / DeepSpeed: every process calls it
    state.wait_for_everyone()
    info.processor.chat_template = info.saved_template  # a stage-1 `plain` run leaves the chat template as it was

    # ---- what was produced; the output folder, written by the main process
    log_data = loss_log(trainer.state.log_history)
    losses = [p["loss"] for p in log_data["train"]]
    res = SFTResult(
        output_dir=out,
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss) if result.training_loss is not None else None,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        eval_loss=eval_loss,
        runtime_s=round(float(result.metrics.get("train_runtime", 0.0)), 2),
        parameters=params,
        rows={**train.kept, "dropped_language": train.dropped["language"], "dropped_vision": train.dropped["vision"]},
        world_size=state.num_processes,
        global_batch_size=checked.batch.global_size,
        gradient_accumulation_steps=checked.batch.accumulation,
        precision=checked.precision,
        engine={**checked.engine.to_json(), "created_partitioned": partitioned},
        precision_plan=checked.plan.to_json(checked.engine),
        memory_estimate=checked.memory,
        resumed_from=str(resume_from) if resume_from else None,
        rank_checksums=checksums,
        packing={**checked.packing.to_json(), "saved": padding_saved(trainer.packing_stats)},
        step_time_split=trainer.step_timer.summary(),
        is_main_process=state.is_main_process,
    )
    if state.is_main_process:
        res.merged_dir = write_output(recipe, checked, out, res.to_json(), log_data, final_dir, overwrite)
        if not recipe.output.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("model written to %s", out)
    state.wait_for_everyone()
    return res
