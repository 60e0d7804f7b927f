"""SFT time to quality: wall time until a held-out target, plain TRL vs mlan's batch orders, on the lab's world.

Throughput alone can mislead: a batch order that saves padding may make the model learn more slowly
per step. So this trains the lab's stage 2 (`recipes/lab_stage2.yaml`, the 12.5% vision MLAN_v
mixture `data_mixtures/lab_mlan_v12.yaml` by default) from the lab's stage-1 model, up to four ways:
- (a) plain TRL: `SFTTrainer` configured to learn the same thing as the recipe, and nothing else
  of mlan: the same start model and mixture rows, the recipe's frozen part (vision tower frozen,
  LLM + projector trained), loss on assistant tokens only (`assistant_only_loss`, the model's own
  chat template, which marks assistant turns), the recipe's learning rate, schedule, warm-up,
  weight decay, clipping, batch size, steps, seed, precision and `max_length`; TRL's default
  uniformly random order. Speed settings that are not mlan's doing are the same in all the runs
  (the device mlan picks, a GPU when one is visible, else the CPU; one dataloader worker as the
  recipe has, gradient checkpointing off, `--threads` torch threads);
- (b) mlan with `training.batch_order: llava` (LLaVA's modality-grouped order, what MLAN's scripts
  set; the lab's own recipe says `random`, so this is set explicitly), padded (`packing: off`);
- (c) mlan with `training.batch_order: wide` (length-sorted groups: least padding), padded;
- (d) mlan packed: plain TRL's random order with `training.packing: in_batch` (each batch's rows,
  image rows included, packed without padding: the same rows and loss per step as plain TRL's).
  The goal is judged on (d). Runs a, b, d by default (`--runs abcd` adds c).
The starting model (world, LLM pretraining, stage 1) is built once through the lab's stages, or read
from a lab folder (`--from-lab runs/lab/seed0`). Each seed builds its own stage-2 mixture (the
mixture's sampling seed) and trains a, b, c in turn (interleaved, so that load from other work on
the machine spreads over all of them).

Target: held-out exact-match accuracy, the lab's own metric, on unseen questions of what stage 2
is for: the instruction phrasing P2 (new in stage 2), the base phrasing P1 (to be kept) and scene
questions with images (new); the score is the mean of the three groups' accuracies. It is measured
teacher-forced: a row counts as right when every assistant token, end token included, is the
model's argmax given the true prefix, which is exactly when greedy decoding would write the answer
and stop. So it costs one forward pass per held-out batch (pre-collated once), every
`--eval-every` steps from a TrainerCallback; the evaluation time is left out of the training wall
time. Assistant-token validation loss is printed beside it. The target (`--target`, 70%) is reached
at the first evaluation from which the score stays at or above it to the end of the run (scores
swing by several points between evaluations). From the stage-1 model (about 45%: P1 kept, P2 and
vision mostly not yet learned) 300 steps bring every run to 74-83%, so 70% is reached by all.

All the runs train on every row: each seed's mixture is measured (mlan's exact row lengths, as
TRL's collator tokenizes them) and the benchmark stops if any row is longer than the recipe's
`max_length` (TRL would truncate it, mlan drop it); mlan's own count of dropped rows must be 0 too.

Printed: the device of the runs; per run: steps and training wall time to the target, the same with
set-up included (run start to target, evaluations left out; set-up is run start to the first step:
model load, and for mlan the measuring of every row), non-padding tokens per second of training,
padding fraction (padded positions / all positions of the training batches), final held-out score
and loss, set-up time, and the step time split when `train_results.json` reports one; then ratios
against plain TRL (mean and [range] over seeds), of training wall time to target and of time to
target with set-up, and whether the goal held: mlan packed (d) reaches the target in at most 0.7x
plain TRL's training wall time with a final score no worse (within `--tolerance` points).

    python benchmarks/sft_time_to_quality.py          # about 6 min on 2 idle CPU cores (2 of them: the start model)
    python benchmarks/sft_time_to_quality.py --from-lab runs/lab/seed0 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# run key: (name, batch order, training.packing); plain TRL's order is the Trainer's random one.
ARMS = {
    "a": ("plain TRL", "random", None),
    "b": ("mlan llava", "llava", "off"),
    "c": ("mlan wide", "wide", "off"),
    "d": ("mlan packed", "random", "in_batch"),
}
RUNS = {k: name for k, (name, _, _) in ARMS.items()}
GOAL_RUN = "d"  # the candidate default: plain TRL's batches without their padding
GROUPS = ("P1", "P2", "vision")
TASKS = ("add", "max", "reverse", "capital")


# --------------------------------------------------------------------------- the starting model


@dataclass
class Start:
    world: Path
    init: Path  # the untrained lab LLaVA: its tokenizer is what the lab's mixtures count tokens with
    stage1: Path
    seconds: float


def build_start(root: Path, from_lab: Path | None) -> Start:
    """The world and stage-1 model: read from a lab seed folder, or built through the lab's own stages."""
    from mlan.lab.plan import LabPlan, train_stages
    from mlan.lab.run import SeedRun

    t0 = time.perf_counter()
    if from_lab is not None:
        start = Start(from_lab / "world", from_lab / "models" / "init", from_lab / "models" / "stage1", 0.0)
        missing = [p for p in (start.world / "index.json", start.init, start.stage1 / "config.json") if not p.exists()]
        if missing:
            raise SystemExit(f"--from-lab {from_lab}: {missing[0]} not found (a `mlan lab` seed folder has it)")
        return start
    plan = LabPlan(seeds=[0], variants=[])
    s = SeedRun(root / "lab", 0, plan)
    init = s.prepare()
    for stage in train_stages(plan):  # pretraining, then stage 1 (no stage-2 variant in the plan)
        res = s.train(stage, init)
        print(f"  built {stage.name}: {res.steps} steps, loss {res.first_loss:.3f} -> {res.last_loss:.3f}", flush=True)
    return Start(s.world, init, s.models / "stage1", time.perf_counter() - t0)


def stage2_mixture(start: Start, root: Path, name: str, seed: int) -> Path:
    """The shipped stage-2 mixture `name` on this world, sampled with `seed`."""
    from mlan.config.mixture import MixtureSpec
    from mlan.data.mixture import build_mixture
    from mlan.lab.plan import mixture_changes, resolved

    spec, _ = resolved("data_mixtures", name, MixtureSpec, start.world, root, mixture_changes(seed, start.init), name)
    out = root / "mixtures" / f"{name}_seed{seed}"
    build_mixture(spec, out, overwrite=True)
    return out


# --------------------------------------------------------------------------- the held-out set


def heldout_mixture(start: Start, root: Path, per_task: int, vision: int) -> Path:
    """The held-out rows in the training rows' exact form: a mixture built from the world's test files."""
    from mlan.config.mixture import MixtureSpec
    from mlan.data.mixture import build_mixture

    w = start.world
    sources = [
        {"name": f"P{p}_{t}", "dataset": str(w / f"language_p{p}" / f"test_{t}.jsonl"), "adapter": "plain",
         "count": per_task}
        for p in (1, 2) for t in TASKS
    ]  # fmt: skip
    sources.append(
        {"name": "vision", "dataset": str(w / "scenes" / "test.jsonl"), "adapter": "plain", "count": vision,
         "columns": {"image": "image"}, "image_root": str(w)}
    )  # fmt: skip
    spec = MixtureSpec.model_validate(
        # dedup off: capitals are a 24-fact table whose test questions repeat by design (see the world).
        {"name": "heldout", "seed": 0, "validation": 0, "dedup": False, "image_tokens": 16,
         "tokenizer": str(start.init), "sources": sources}
    )  # fmt: skip
    out = root / "mixtures" / "heldout"
    build_mixture(spec, out, overwrite=True)
    return out


def heldout_batches(start: Start, mixture: Path, batch: int) -> list[tuple[dict, list[str]]]:
    """The held-out rows collated once (TRL's vision collator, assistant tokens as labels), each
    batch with the group of each row."""
    from datasets import load_from_disk
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = AutoProcessor.from_pretrained(start.stage1)
    collate = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True, max_length=None)
    rows = load_from_disk(str(mixture))["train"]
    out = []
    for i in range(0, len(rows), batch):
        chunk = [rows[j] for j in range(i, min(i + batch, len(rows)))]
        groups = [r["source"].split("_")[0] for r in chunk]
        examples = [{"messages": r["messages"], "images": r["images"]} for r in chunk]
        out.append((collate(examples), groups))
    return out


@dataclass
class Score:
    step: int
    train_s: float
    loss: float
    acc: dict[str, float]

    @property
    def score(self) -> float:
        return statistics.mean(self.acc[g] for g in GROUPS)


def evaluate(model, batches) -> tuple[float, dict[str, float]]:
    """(assistant-token loss, exact-match accuracy per group) over the held-out batches."""
    import torch

    right = {g: 0 for g in GROUPS}
    total = {g: 0 for g in GROUPS}
    nll, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch, groups in batches:
            inputs = {k: v.to(model.device) for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits[:, :-1].float()
            labels = batch["labels"][:, 1:].to(model.device)
            mask = labels != -100
            nll += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            tokens += int(mask.sum())
            ok = ((logits.argmax(-1) == labels) | ~mask).all(dim=1)
            for g, good in zip(groups, ok.tolist(), strict=True):
                right[g] += int(good)
                total[g] += 1
    model.train(was_training)
    return nll / tokens, {g: right[g] / total[g] for g in GROUPS}


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    seed: int
    key: str
    curve: list[Score] = field(default_factory=list)
    real: int = 0  # non-padding positions of the training batches
    positions: int = 0  # all positions of the training batches
    train_s: float = 0.0  # training wall time, evaluations left out
    total_s: float = 0.0  # the whole run: set-up, training, evaluations, saving
    setup_s: float = 0.0  # run start to the first training step
    steps: int = 0
    batch: int = 0  # rows per step
    split: dict | None = None  # train_results.json's step_time_split, when mlan reports one
    device: str = ""  # where the model trained

    def reached(self, target: float) -> Score | None:
        """The first evaluation from which the score stays at or above `target` to the end: the held-out
        score swings by several points between evaluations (a run of one-modality batches moves the
        vision accuracy), so a first crossing alone can be luck."""
        hit = None
        for s in self.curve:
            if s.score < target:
                hit = None
            elif hit is None:
                hit = s
        return hit

    @property
    def final(self) -> Score:
        return self.curve[-1]

    @property
    def tokens_per_s(self) -> float:
        return self.real / self.train_s

    @property
    def padding(self) -> float:
        return 1 - self.real / self.positions


def held_out_callback(run: Run, batches, every: int, t_run: float):
    """A TrainerCallback that scores the held-out set every `every` steps and at the end, and counts the
    real and padded positions of every training batch (a forward pre-hook: the batches are collated in
    a dataloader worker, where nothing of this process can count them)."""
    from transformers import TrainerCallback

    class HeldOut(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.t0 = time.perf_counter()
            self.eval_s = 0.0
            run.setup_s = self.t0 - t_run
            run.device = str(next(model.parameters()).device)

            def count(module, a, kw):
                if module.training and kw.get("attention_mask") is not None:
                    run.real += int(kw["attention_mask"].sum())
                    run.positions += kw["attention_mask"].numel()

            self.hook = model.register_forward_pre_hook(count, with_kwargs=True)
            # The start model's score, as step 0 (before the clock starts: it is no training time).
            loss, acc = evaluate(model, batches)
            run.curve.append(Score(0, 0.0, loss, acc))
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if step % every and step != state.max_steps:
                return
            now = time.perf_counter()
            train_s = now - self.t0 - self.eval_s
            loss, acc = evaluate(model, batches)
            self.eval_s += time.perf_counter() - now
            run.curve.append(Score(step, train_s, loss, acc))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.hook.remove()
            run.steps = state.global_step
            run.batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            run.train_s = time.perf_counter() - self.t0 - self.eval_s

    return HeldOut()


def stage2_recipe(
    start: Start,
    root: Path,
    mixture: Path,
    seed: int,
    order: str,
    steps: int | None,
    batch: int | None,
    packing: str | None = None,
):
    """The shipped stage-2 recipe on this start model and mixture, with `order` as the batch order and
    `packing` as training.packing (None: the recipe's)."""
    from mlan.config.recipe import SFTRecipe
    from mlan.lab.plan import resolved

    changes = {
        "model.path": str(start.stage1),
        "data.mixture": str(mixture),
        "output.dir": str(root / "out" / f"{order}_{packing}_seed{seed}"),
        "training.seed": seed,
        "training.batch_order": order,
    }
    if packing is not None:
        changes["training.packing"] = packing
    if steps is not None:
        changes["training.max_steps"] = steps
    if batch is not None:
        changes["training.per_device_train_batch_size"] = batch
    recipe, _ = resolved("recipes", "lab_stage2", SFTRecipe, start.world, root, changes, f"stage2_{order}_{packing}")
    return recipe


def check_lengths(recipe) -> int:
    """The longest row of the recipe's mixture as TRL's collator tokenizes it (mlan's exact measure,
    which needs no image decoded); stops the benchmark when any row is longer than `max_length`:
    TRL would truncate it and mlan drop it, and the runs would no longer learn the same rows."""
    from datasets import load_from_disk
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    from mlan.train.data import row_lengths

    path, max_length = recipe.model.path, recipe.training.max_length
    processor = AutoProcessor.from_pretrained(path)
    side = AutoConfig.from_pretrained(path).vision_config.image_size
    enc = processor(text=processor.image_token, images=[Image.new("RGB", (side, side))], return_tensors="pt")
    image_tokens = int((enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum())
    rows = load_from_disk(recipe.data.mixture)["train"]
    lengths, _ = row_lengths(rows, processor, processor.chat_template, image_tokens)
    over = sum(n > max_length for n in lengths)
    if over:
        raise SystemExit(f"{recipe.data.mixture}: {over} of {len(lengths)} rows longer than max_length {max_length}")
    return max(lengths)


def run_plain_trl(recipe, run: Run, callback) -> None:
    """(a) SFTTrainer on the recipe's rows and hyperparameters, learning what the recipe learns, on the
    device and in the precision mlan picks for the recipe."""
    from datasets import load_from_disk
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from mlan.train.precision import resolve_precision

    t, tr = recipe.training, recipe.train
    if (tr.language_model, tr.projector, tr.vision_tower) != ("full", True, False):
        raise SystemExit("lab_stage2 no longer trains LLM + projector with the tower frozen: update run_plain_trl")
    precision, cuda = resolve_precision(t.precision)  # mlan's choice: a GPU when one is visible
    model = LlavaForConditionalGeneration.from_pretrained(recipe.model.path)
    # The recipe's frozen part, as a TRL user freezes it: nothing in TRL freezes the tower on its own.
    for name, p in model.named_parameters():
        p.requires_grad_("vision_tower" not in name)
    args = SFTConfig(
        output_dir=str(Path(recipe.output.dir).with_suffix(".trl")),
        assistant_only_loss=True,
        # No row is longer (checked by `check_lengths`): nothing is truncated, as mlan drops nothing.
        max_length=t.max_length,
        learning_rate=t.learning_rate,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # below 1: a ratio (transformers 5 folded warmup_ratio in)
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=run.seed,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=False,  # TRL turns it on by default; the recipe leaves it off
        dataloader_num_workers=t.dataloader_num_workers,
        save_strategy="no",
        logging_steps=10_000,
        report_to="none",
        **t.extra,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=load_from_disk(recipe.data.mixture)["train"],
        processing_class=AutoProcessor.from_pretrained(recipe.model.path),
        callbacks=[callback],
    )
    # The Trainer's progress bar and its printed metrics: mlan's runs show neither.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.train()


def run_mlan(recipe, run: Run, callback) -> None:
    """(b), (c), (d): `run_sft` on the recipe as it is (its batch order and packing set by `stage2_recipe`)."""
    from mlan.train.sft import run_sft

    res = run_sft(recipe, resume=False, overwrite=True, callbacks=[callback])
    dropped = res.rows["dropped_language"] + res.rows["dropped_vision"]
    if dropped:
        raise SystemExit(
            f"{RUNS[run.key]}: mlan dropped {dropped} over-long rows (max_length {recipe.training.max_length})"
        )
    results = json.loads((res.output_dir / "train_results.json").read_text(encoding="utf-8"))
    run.split = results.get("step_time_split")  # added by the padding-free/time-split work; absent before it
    saved = (results.get("packing") or {}).get("saved")
    if saved:
        # Packed batches carry no attention_mask for the hook to count: mlan's own count of them instead.
        run.real += saved["real_tokens"]
        run.positions += saved["packed_positions"]


# --------------------------------------------------------------------------- the table


def fmt_split(split) -> str:
    """ms per step of data / forward+backward / optimizer, from mlan's step_time_split (its fourth part,
    `other`, holds this benchmark's evaluations and is left out)."""
    if not isinstance(split, dict) or not isinstance(split.get("seconds"), dict) or not split.get("steps"):
        return ""
    sec, steps = split["seconds"], split["steps"]
    return " / ".join(f"{sec.get(k, 0) / steps * 1000:.0f}" for k in ("data", "forward_backward", "optimizer"))


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def report(runs: list[Run], a, start: Start, wall: float) -> dict:
    import torch

    target = a.target
    start_score = statistics.mean(r.curve[0].score for r in runs)
    devices = sorted({r.device for r in runs})
    if len(devices) != 1:
        raise SystemExit(f"the runs trained on different devices: {', '.join(devices)}")
    device = devices[0]
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    print(f"\nSFT time to quality: lab stage 2 on {a.mixture}, {runs[0].steps} steps x {runs[0].batch} rows, "
          f"held-out target {target:.0%} (mean of P1 / P2 / vision exact match), evaluated every {a.eval_every} steps (stage-1 model: {start_score:.1%}); "
          f"every run on device {device}, {torch.get_num_threads()} torch thread(s); no row dropped or truncated")  # fmt: skip
    head = (f"{'seed':>4} {'run':<11} {'steps@T':>7} {'s@T':>7} {'+setup':>7} {'tok/s':>7} {'padding':>8} "
            f"{'final':>6} {'P1/P2/vis':>14} {'loss':>6} {'train s':>7} {'setup s':>7}  ms/step data/fwd+bwd/opt")  # fmt: skip
    print(head)
    for r in runs:
        hit = r.reached(target)
        f = r.final
        accs = "/".join(f"{f.acc[g] * 100:.0f}" for g in GROUPS)
        print(
            f"{r.seed:>4} {RUNS[r.key]:<11} {hit.step if hit else '-':>7} "
            f"{f'{hit.train_s:.1f}' if hit else 'not met':>7} {f'{hit.train_s + r.setup_s:.1f}' if hit else '-':>7} "
            f"{r.tokens_per_s:>7,.0f} {r.padding:>8.1%} "
            f"{f.score:>6.1%} {accs:>14} {f.loss:>6.3f} {r.train_s:>7.1f} {r.setup_s:>7.1f}  {fmt_split(r.split)}"
        )
    seeds = sorted({r.seed for r in runs})
    by = {(r.seed, r.key): r for r in runs}
    summary: dict = {}
    print(f"\nagainst plain TRL, mean [range] over seeds {','.join(map(str, seeds))}:")
    for key in [k for k in ("b", "c", "d") if any(r.key == k for r in runs)]:  # the runs asked for (--runs)
        time_r, setup_r, step_r, tok_r, diff = [], [], [], [], []
        missed = 0
        for s in seeds:
            base, r = by[(s, "a")], by[(s, key)]
            hb, hr = base.reached(target), r.reached(target)
            if hb and hr:
                time_r.append(hr.train_s / hb.train_s)
                # run start to target: set-up (run start to first step) + training wall time to target
                setup_r.append((r.setup_s + hr.train_s) / (base.setup_s + hb.train_s))
                step_r.append(hr.step / hb.step)
            else:
                missed += 1
            tok_r.append(r.tokens_per_s / base.tokens_per_s)
            diff.append((r.final.score - base.final.score) * 100)
        note = f" ({missed} seed(s) where a run missed the target)" if missed else ""
        print(f"  {RUNS[key]:<11} wall time to target {spread(time_r, '.2f')}x (set-up included "
              f"{spread(setup_r, '.2f')}x), steps {spread(step_r, '.2f')}x, "
              f"tokens/s {spread(tok_r, '.2f')}x, final score {spread(diff, '+.1f')} points{note}")  # fmt: skip
        summary[key] = {"time_ratio": time_r, "time_with_setup_ratio": setup_r, "step_ratio": step_r,
                        "tokens_ratio": tok_r, "score_diff": diff}  # fmt: skip
    if GOAL_RUN not in summary:  # no run to judge the goal by
        return {"summary": summary, "goal_held": None}
    b = summary[GOAL_RUN]
    fast = len(b["time_ratio"]) == len(seeds) and statistics.mean(b["time_ratio"]) <= 0.7
    good = statistics.mean(b["score_diff"]) >= -a.tolerance
    held = fast and good
    t_mean = f"{statistics.mean(b['time_ratio']):.2f}x" if b["time_ratio"] else "target not met"
    print(f"goal ({RUNS[GOAL_RUN]} ≤ 0.7x plain TRL's training wall time to target, final score no worse than "
          f"{a.tolerance:g} point below): {'HELD' if held else 'NOT HELD'} "
          f"(time {t_mean}, final score {statistics.mean(b['score_diff']):+.1f} points)")  # fmt: skip
    print(f"start model: {'read from ' + str(a.from_lab) if a.from_lab else f'built in {start.seconds:.0f} s'}; "
          f"benchmark wall time {wall / 60:.1f} min")  # fmt: skip
    return {"summary": summary, "goal_held": held}


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (each: the runs in turn)")
    ap.add_argument("--mixture", default="lab_mlan_v12", help="the stage-2 mixture (data_mixtures/lab_*.yaml)")
    ap.add_argument("--steps", type=int, help="stage-2 steps (default: the recipe's)")
    ap.add_argument("--batch", type=int, help="rows per step (default: the recipe's)")
    ap.add_argument("--target", type=float, default=0.70, help="held-out score to reach (mean group accuracy)")
    ap.add_argument("--tolerance", type=float, default=1.0, help="final-score points below plain TRL still 'no worse'")
    ap.add_argument("--eval-every", type=int, default=10, help="steps between held-out evaluations")
    ap.add_argument("--heldout-per-task", type=int, default=40, help="held-out rows per language task and phrasing")
    ap.add_argument("--heldout-vision", type=int, default=120, help="held-out scene questions with images")
    ap.add_argument(
        "--runs", default="abd", help="which runs: a plain TRL, b mlan llava, c mlan wide, d mlan packed (random order)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (the lab's setting: degrades least when shared)"
    )
    ap.add_argument("--from-lab", type=Path, help="a `mlan lab` seed folder to start from (skips building it)")
    ap.add_argument("--json", type=Path, help="also write every curve and figure here")
    a = ap.parse_args()

    import torch

    from mlan.lab.run import quiet_libraries

    logging.basicConfig(level=logging.WARNING)
    # bitsandbytes (imported by peft) warns on import that a CPU kernel package is missing: not used here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    quiet_libraries()
    torch.set_num_threads(a.threads)
    t_bench = time.perf_counter()
    seeds = [int(s) for s in a.seeds.split(",")]
    if "a" not in a.runs or set(a.runs) - set(RUNS):
        raise SystemExit(f"--runs {a.runs}: letters of abcd, with a (plain TRL, what the others are compared with)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("start model: " + (f"reading {a.from_lab}" if a.from_lab else "building the lab's world, pretraining and stage 1"), flush=True)  # fmt: skip
        start = build_start(root, a.from_lab)
        batches = heldout_batches(start, heldout_mixture(start, root, a.heldout_per_task, a.heldout_vision), 100)
        runs: list[Run] = []
        for seed in seeds:
            mixture = stage2_mixture(start, root, a.mixture, seed)
            longest = check_lengths(stage2_recipe(start, root, mixture, seed, "random", a.steps, a.batch))
            print(f"  seed {seed} mixture: longest row {longest} tokens, none over max_length", flush=True)
            for key in a.runs:
                _, order, packing = ARMS[key]
                recipe = stage2_recipe(start, root, mixture, seed, order, a.steps, a.batch, packing)
                run = Run(seed, key)
                t_run = time.perf_counter()
                callback = held_out_callback(run, batches, a.eval_every, t_run)
                (run_plain_trl if key == "a" else run_mlan)(recipe, run, callback)
                run.total_s = time.perf_counter() - t_run
                if not run.curve:
                    raise SystemExit(f"{RUNS[key]}: the held-out callback never ran (did run_sft stop using build_trainer?)")  # fmt: skip
                hit = run.reached(a.target)
                print(f"  seed {seed} {RUNS[key]:<11} {run.steps} steps, final score {run.final.score:.1%}, "
                      f"target {'at step ' + str(hit.step) if hit else 'not met'}, {run.total_s:.0f} s", flush=True)  # fmt: skip
                runs.append(run)
        out = report(runs, a, start, time.perf_counter() - t_bench)
    if a.json:
        out["runs"] = [
            {"seed": r.seed, "run": RUNS[r.key], "steps": r.steps, "train_s": r.train_s, "setup_s": r.setup_s,
             "total_s": r.total_s, "real_tokens": r.real, "positions": r.positions, "step_time_split": r.split,
             "curve": [{"step": s.step, "train_s": s.train_s, "loss": s.loss, "acc": s.acc} for s in r.curve]}
            for r in runs
        ]  # fmt: skip
        out["args"] = {k: str(v) for k, v in vars(a).items()}
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
