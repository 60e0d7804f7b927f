"""`mlan sft`: fine-tune a LLaVA-style model with TRL (full, LoRA or QLoRA), one or many processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, Overwrite, console, load


def sft(
    recipe: Annotated[Path, typer.Argument(help="SFT recipe YAML (a path, or a shipped name such as tiny).")],
    overrides: Overrides = None,
    resume: Annotated[
        bool | None,
        typer.Option(
            "--resume/--no-resume",
            help="Continue from the last checkpoint (default: automatically when one exists) or start over.",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Fine-tune a LLaVA-style model on a built mixture with TRL's SFTTrainer.

    Output: runs/<recipe name>/ unless output.dir is set. Checkpoints go to OUTPUT.checkpoints/ beside it; a killed run continues from the last one.

    Several GPUs: the same command under `accelerate launch --config_file recipes/accelerate/<ddp|fsdp|deepspeed_zero3>.yaml -m mlan sft ...`, `torchrun --nproc-per-node N -m mlan sft ...` or `deepspeed --num_gpus N --module mlan sft ...` (`training.engine` names DeepSpeed ZeRO-2/3 or FSDP2 for the last two).

    Wings (a `wings:` section, stage 1 then 2): mlan sft wings_tiny_stage1 && mlan sft wings_tiny

    Example: mlan sft recipes/tiny.yaml -o training.max_steps=20 -o output.dir=runs/tiny-short
    """
    from mlan.config.recipe import SFTRecipe
    from mlan.train.sft import run_sft

    config = load(recipe, "recipes", SFTRecipe, overrides)
    if config.name is None:
        config.name = Path(recipe).stem
    res = run_sft(config, resume=resume, overwrite=overwrite)
    if not res.is_main_process:
        return
    from mlan.runs import record_latest

    record_latest(res.output_dir, "sft")  # `mlan eval` and `mlan merge` default to the newest run
    from rich.table import Table

    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    table = Table(title=f"SFT: {config.name or res.output_dir.name}", show_header=False)
    table.add_row("output", str(res.output_dir))
    if res.merged_dir:
        table.add_row("merged model", str(res.merged_dir))
    p = res.parameters.get("all", {})
    table.add_row("trainable parameters", f"{p.get('trainable', 0):,} of {p.get('total', 0):,}")
    r = res.rows
    table.add_row(
        "rows (language / vision)",
        f"{r['language']:,} / {r['vision']:,}  (dropped as too long: {r['dropped_language']} / {r['dropped_vision']})",
    )
    table.add_row("steps", f"{res.steps} (global batch {res.global_batch_size}, {res.world_size} process(es))")
    table.add_row("engine", res.engine["label"])
    table.add_row("master weights", res.precision_plan["description"])
    from mlan.train.precision import human_bytes

    mem = res.memory_estimate["bytes_per_device"]
    table.add_row(
        "memory per device",
        f"{human_bytes(mem['total'])} for weights {human_bytes(mem['weights'])}, gradients {human_bytes(mem['gradients'])}, optimizer "
        f"{human_bytes(mem['optimizer'])} (estimated, activations not included)",
    )
    table.add_row("train loss first / last", f"{f(res.first_loss)} / {f(res.last_loss)}")
    table.add_row("validation loss", f(res.eval_loss))
    table.add_row(
        "runtime", f"{res.runtime_s:.1f} s" + (f" (resumed from {res.resumed_from})" if res.resumed_from else "")
    )
    if res.step_time_split:
        from mlan.train.timing import describe

        table.add_row("step time", describe(res.step_time_split))
    from mlan.train.packing import describe_packing

    table.add_row("packing", describe_packing(res.packing))
    console().print(table)
