"""The output folder of a finished SFT run, assembled atomically: weights (or adapter, and the merged
model for LoRA), processor, recipe, loss log, loss curve, model card, results.

Light to import (torch, transformers, peft and matplotlib inside the functions): `mlan.train.sft`
imports this module at its top, and `mlan.lab.run` imports that one at its top.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlan.config.base import dump_config
from mlan.config.recipe import SFTRecipe
from mlan.io import atomic_dir, atomic_write_json, atomic_write_text
from mlan.train.checkpoint import RUN_RECORD, TENSORBOARD_DIR
from mlan.train.model_info import ModelInfo
from mlan.train.packing import describe_packing
from mlan.train.preflight import Checked


def loss_log(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The Trainer's log history split into training points, evaluation points and the summary."""
    train, evals, summary = [], [], {}
    for entry in log_history:
        if "loss" in entry:
            train.append(
                {
                    k: entry[k]
                    for k in (
                        "step",
                        "epoch",
                        "loss",
                        "learning_rate",
                        "grad_norm",
                        "mean_token_accuracy",
                        "num_tokens",
                    )
                    if k in entry
                }
            )
        elif "eval_loss" in entry:
            evals.append({k: v for k, v in entry.items() if k in ("step", "epoch") or k.startswith("eval_")})
        elif "train_runtime" in entry:
            summary = dict(entry)
    return {"train": train, "eval": evals, "summary": summary}


def write_loss_log(path: Path, log: dict[str, Any]) -> None:
    """Write the loss log as JSON."""
    atomic_write_json(path, log)


def plot_loss(path: Path, log: dict[str, Any], title: str) -> None:
    """Training loss against optimizer step (and the validation loss, if measured), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    steps = [p["step"] for p in log["train"]]
    ax.plot(steps, [p["loss"] for p in log["train"]], marker="." if len(steps) < 60 else None, label="train loss")
    evals = [p for p in log["eval"] if "eval_loss" in p]
    if evals:
        ax.scatter([p["step"] for p in evals], [p["eval_loss"] for p in evals], color="C3", zorder=3, label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _fmt(n: float | int | None, digits: int = 4) -> str:
    if n is None:
        return "n/a"
    if isinstance(n, int):
        return f"{n:,}"
    return f"{n:.{digits}g}"


def _packing_line(packing: dict[str, Any] | None) -> str:
    """The model card's line on `training.packing`: what it resolved to, why, and the padding it saved."""
    if not packing:
        return "- In-batch packing: n/a"
    return f"- In-batch packing (`packing: {packing.get('setting')}`): {describe_packing(packing)}"


def _split_cell(split: dict[str, Any] | None) -> str:
    if not split:
        return "n/a"
    return " / ".join(f"{split['fractions'][p]:.0%}" for p in ("data", "forward_backward", "optimizer", "other"))


def _model_section(recipe: Any, results: dict[str, Any]) -> list[str]:
    """The model card's "Model" section: base, what was trained (LoRA, Wings stage), parameters."""
    tr = recipe.train
    lines = [
        "## Model",
        f"- Base: `{recipe.model.path}`",
        f"- Trained: language model **{tr.language_model}**"
        + (
            f" (r={tr.lora.r}, alpha={tr.lora.alpha}, targets {', '.join(tr.lora.target_modules)})"
            if tr.language_model in ("lora", "qlora")
            else ""
        )
        + f", projector **{'trained' if tr.projector else 'frozen'}**, vision tower **{'trained' if tr.vision_tower else 'frozen'}**",
    ]
    wings = getattr(recipe, "wings", None)
    if wings is not None:
        rates = wings.stage1 if wings.stage == 1 else wings.stage2
        lines[-1] = f"- Trained: **Wings stage {wings.stage}** (Zhang et al. 2024, arXiv 2406.03496): " + (
            "projector + visual learners (added directly, no router); language model and vision tower frozen"
            if wings.stage == 1
            else "visual + textual learners, router and the full language model, projector at its own rate; "
            "vision tower frozen"
        )
        lines += [
            f"- Wings learners: rank {wings.rank}, layers {wings.layers}, router {wings.router}; learning rates "
            + ", ".join(f"{k} {v:g}" for k, v in rates.model_dump().items()),
            "- Stored apart from the base: `wings.safetensors` + `wings_config.json` (the rest is a standard LLaVA "
            "folder); open it with `mlan.wings.load_wings_model(path)` or `mlan eval`",
        ]
    params = results.get("parameters", {}).get("all")
    if params:
        share = 100 * params["trainable"] / max(params["total"], 1)
        lines.append(f"- Parameters: {params['trainable']:,} trainable of {params['total']:,} ({share:.2f}%)")
    return lines


def model_card(
    *,
    name: str,
    recipe: Any,
    recipe_yaml: str,
    manifest: dict[str, Any] | None,
    mixture_path: str,
    results: dict[str, Any],
) -> str:
    """A README.md for the output folder: what was trained, on what data, with which settings and results."""
    t = recipe.training
    wings = getattr(recipe, "wings", None)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [llava, mlan, sft, trl]",
        "---",
        "",
        f"# {name}",
        "",
        recipe.description or "A LLaVA-style model fine-tuned with mlan (TRL SFTTrainer).",
        "",
        *_model_section(recipe, results),
        "",
        "## Data",
        f"- Mixture: `{mixture_path}`",
    ]
    if manifest:
        for key in ("name", "content_hash", "config_hash"):
            if key in manifest:
                lines.append(f"- {key.replace('_', ' ')}: `{manifest[key]}`")
        if manifest.get("covers_eval_tasks"):
            lines.append(f"- Seen evaluation tasks (trained on): {', '.join(manifest['covers_eval_tasks'])}")
    rows = results.get("rows", {})
    lines.append(
        f"- Rows trained on: {_fmt(rows.get('language'))} language, {_fmt(rows.get('vision'))} vision; "
        f"dropped as longer than {t.max_length} tokens: {_fmt(rows.get('dropped_language'))} language, "
        f"{_fmt(rows.get('dropped_vision'))} vision"
    )
    lines += [
        "",
        "## Training",
        ("- lr per Wings group (above)" if wings is not None else f"- lr {t.learning_rate:g}")
        + f", {t.lr_scheduler_type} schedule, warmup {t.warmup_ratio:g}, weight decay {t.weight_decay:g}",
        f"- Global batch {results.get('global_batch_size')} ({t.per_device_train_batch_size} per device x "
        f"{results.get('gradient_accumulation_steps')} accumulation x {results.get('world_size')} processes), "
        f"max length {t.max_length}, seed {t.seed}, precision {results.get('precision')}",
        f"- Engine: {(results.get('engine') or {}).get('label', 'n/a')}; master weights: "
        f"{(results.get('precision_plan') or {}).get('description', 'n/a')}",
        f"- Batch order: {t.batch_order}; loss on assistant tokens only: {'yes' if t.assistant_only_loss else 'no'}",
        _packing_line(results.get("packing")),
        f"- Images: `image_aspect_ratio: {recipe.data.image_aspect_ratio}` ("
        + (
            "padded to a square with the processor's mean colour, then resized and cropped; evaluate the same way)"
            if recipe.data.image_aspect_ratio == "pad"
            else "resized and centre-cropped as they are)"
        ),
        "",
        "## Results",
        "| metric | value |",
        "| --- | --- |",
        f"| optimizer steps | {_fmt(results.get('steps'))} |",
        f"| first logged train loss | {_fmt(results.get('first_loss'))} |",
        f"| last logged train loss | {_fmt(results.get('last_loss'))} |",
        f"| mean train loss | {_fmt(results.get('train_loss'))} |",
        f"| validation loss | {_fmt(results.get('eval_loss'))} |",
        f"| runtime (s) | {_fmt(results.get('runtime_s'), 5)} |",
        f"| step time: data / forward+backward / optimizer / other | {_split_cell(results.get('step_time_split'))} |",
        "",
        "The loss curve is in `loss_curve.png`, every logged point in `loss_log.json`, the mixture's manifest "
        "in `mixture_manifest.json`.",
        "",
        "## Recipe",
        "```yaml",
        recipe_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(path: Path, **kwargs: Any) -> None:
    """Write the model card (see `model_card`)."""
    atomic_write_text(path, model_card(**kwargs))


def write_output(
    recipe: SFTRecipe,
    checked: Checked,
    out: Path,
    results: dict[str, Any],
    log_data: dict[str, Any],
    final_dir: Path,
    overwrite: bool,
) -> Path | None:
    """Assemble the output folder `out` atomically from the final save in `final_dir`: weights (or
    adapter), processor, recipe, logs, card, `results` (completed here); the merged model's folder, if any."""
    info, mixture_dir, manifest = checked.info, checked.mixture_dir, checked.manifest
    name = recipe.name or out.name
    lora = recipe.train.language_model in ("lora", "qlora")
    merged = None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for f in final_dir.iterdir():
            if f.name in ("README.md", "training_args.bin"):
                continue  # TRL's generic card is replaced by ours below
            shutil.move(str(f), tmp / f.name)
        info.processor.save_pretrained(tmp)
        if manifest is not None:
            shutil.copyfile(mixture_dir / "manifest.json", tmp / "mixture_manifest.json")
        if lora and recipe.output.merge_lora:
            merge_lora(recipe, info, tmp, tmp / "merged")
            if manifest is not None:
                shutil.copyfile(mixture_dir / "manifest.json", tmp / "merged" / "mixture_manifest.json")
            merged = out / "merged"
        recipe_yaml = dump_config(recipe)
        atomic_write_text(tmp / "recipe.yaml", recipe_yaml)
        write_loss_log(tmp / "loss_log.json", log_data)
        if (final_dir.parent / TENSORBOARD_DIR).is_dir():
            shutil.move(str(final_dir.parent / TENSORBOARD_DIR), tmp / TENSORBOARD_DIR)
        plot_loss(tmp / "loss_curve.png", log_data, name)
        results = dict(results)
        results["output_dir"] = str(out)
        results["merged_dir"] = str(merged) if merged else None
        results["mixture"] = str(mixture_dir)
        results["chat_template"] = info.template_source
        results["image_aspect_ratio"] = recipe.data.image_aspect_ratio
        atomic_write_json(tmp / "train_results.json", results)
        write_model_card(
            tmp / "README.md",
            name=name,
            recipe=recipe,
            recipe_yaml=recipe_yaml,
            manifest=manifest,
            mixture_path=str(mixture_dir),
            results=results,
        )
        if recipe.output.keep_checkpoints:
            ckpts = tmp / "checkpoints"
            ckpts.mkdir()
            for p in sorted(final_dir.parent.glob("checkpoint-*")):
                shutil.move(str(p), ckpts / p.name)
            # What the run was made of goes with its checkpoints, so that a resumption from them is checked.
            record = final_dir.parent / RUN_RECORD
            if record.is_file():
                shutil.copy2(record, ckpts / RUN_RECORD)
    return merged


def merge_lora(recipe: SFTRecipe, info: ModelInfo, adapter_dir: Path, dest: Path) -> None:
    """Fold the adapter into an unquantized copy of the base model and save a full LLaVA folder."""
    import torch
    from peft import PeftModel

    dtype = "auto" if recipe.model.dtype == "auto" else getattr(torch, recipe.model.dtype)
    kwargs = {"revision": recipe.model.revision} if recipe.model.revision else {}
    base = info.model_class.from_pretrained(info.path, dtype=dtype, **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.image_aspect_ratio = recipe.data.image_aspect_ratio  # as run_sft records it
    dest.mkdir(parents=True)
    merged.save_pretrained(dest)
    info.processor.save_pretrained(dest)
