"""SFT throughput: plain TRL vs mlan doing the same work, same model, same MLAN_v-style mixture.

Both runs train one epoch over the same rows with the same batch size, hyperparameters, seed, device
and precision, and learn the same thing:
- plain TRL: `SFTTrainer` configured as a TRL user would to match mlan's defaults: vision tower
  frozen (LLM, projector and head trained), `assistant_only_loss` with the model's own chat template
  (it marks assistant turns with `{% generation %}`), image placeholder tokens masked out of the
  labels (a collator wrapper), the same `max_length`, the recipe's schedule, warm-up, weight decay
  and clipping, activation checkpointing off (TRL turns it on by default; mlan's default is off);
  TRL's uniformly random batches;
- mlan llava: `mlan.train.sft.run_sft` on the same model and mixture, batches grouped by modality and
  length (`batch_order: llava`), padded (`packing: off`);
- mlan packed: `run_sft` in plain TRL's random order with `packing: in_batch` (each batch's rows, image
  rows included, packed without padding: the batches plain TRL trains on, minus their padding).
So what differs is the batch order or the packing, and what follows from them (padding). Checked, or the benchmark
stops: no row is longer than `max_length` (nothing truncated by TRL, nothing dropped by mlan, which
also reports its dropped rows), and both runs put the loss on the same number of tokens, none of
them image tokens.

The mixture mimics MLAN_v: language rows of 100-400 tokens built from the bundled SQuAD /
CosmosQA / ARC text, vision rows of one bundled image (576 image tokens, as CLIP ViT-L/14-336
gives LLaVA-1.5) plus a short question. Printed: non-padding tokens per second of each run,
their ratio and the padding fraction (padded positions / all positions of the batches the model
was given, counted by a forward pre-hook; a packed batch has no attention_mask to count from, so for
it mlan's own count of real tokens and positions, from train_results.json).

    python benchmarks/sft_throughput.py                 # about 3 min on 2 idle CPU cores (three runs)
    python benchmarks/sft_throughput.py --vision-share 0.125 --rows 512
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_LENGTH = 2048  # both runs


class Counts:
    """What the model was given in training: real and all positions, label (loss) tokens, and label
    tokens that are image placeholders (must stay 0)."""

    def __init__(self) -> None:
        self.real = self.positions = self.labels = self.image_labels = 0


def counting_callback(counts: Counts, image_token_id: int):
    """A TrainerCallback that counts every training batch at the model's forward (a pre-hook: the
    same count for both runs, whatever collator wrappers each has)."""
    from transformers import TrainerCallback

    class Count(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            def count(module, a, kw):
                if not module.training:
                    return
                ids, mask, labels = kw.get("input_ids"), kw.get("attention_mask"), kw.get("labels")
                counts.positions += ids.numel()
                counts.real += int(mask.sum()) if mask is not None else ids.numel()  # padding-free: no mask
                if labels is not None:
                    counts.labels += int((labels != -100).sum())
                    counts.image_labels += int(((labels != -100) & (ids == image_token_id)).sum())

            self.hook = model.register_forward_pre_hook(count, with_kwargs=True)

        def on_train_end(self, args, state, control, **kwargs):
            self.hook.remove()

    return Count()


class MaskImageTokens:
    """The collator wrapper a TRL user writes to keep `<image>` placeholders out of the labels."""

    def __init__(self, collator, image_token_id: int) -> None:
        self.collator = collator
        self.image_token_id = image_token_id

    def __call__(self, examples):
        batch = self.collator(examples)
        batch["labels"][batch["input_ids"] == self.image_token_id] = -100
        return batch


def build_model(out: Path, size: str, seed: int) -> Path:
    """A tiny LLaVA whose vision tower makes 576 image tokens (96 px, patch 4), saved to `out`."""
    from mlan import tiny

    # A benchmark-only shape: LLaVA-1.5's 576 image tokens per image with a small LLM.
    tiny.SIZES.setdefault(
        "bench576",
        tiny.TinySize(
            hidden=256,
            layers=4,
            heads=4,
            kv_heads=4,
            intermediate=688,
            vision_hidden=64,
            vision_layers=2,
            vision_heads=4,
            image_size=96,
            patch_size=4,
        ),
    )
    return tiny.save_tiny_llava(out, size=size, seed=seed)


def _text_pool() -> list[str]:
    data = REPO / "mlan" / "assets" / "data"
    words: list[str] = []
    for f in ("squad/validation.jsonl", "cosmos_qa/validation.jsonl", "arc_easy/train.jsonl"):
        for line in (data / f).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            for key in ("context", "question"):
                if isinstance(r.get(key), str):
                    words.extend(r[key].split())
    return words


def build_mixture(
    out: Path,
    tokenizer,
    rows: int,
    vision_share: float,
    seed: int,
    *,
    text_tokens: tuple[int, int] = (100, 400),
    template_tokens: int = 70,
    instruction: str = "What is the answer? Answer briefly.",
    answer_words: int = 6,
    name: str = "bench",
) -> dict:
    """An MLAN_v-style mixture folder (the mixture-stage contract) with realistic row lengths: text rows of
    `text_tokens` tokens (`template_tokens` of them the template's), image rows of one bundled image and a
    one-word question. benchmarks/gpu_sft.py builds its rows here too, longer."""
    from datasets import Dataset, DatasetDict

    from mlan.data.mixture import features as mixture_features

    rnd = random.Random(seed)
    words = _text_pool()
    images = sorted(p for p in (REPO / "mlan" / "assets" / "data" / "images").iterdir() if p.suffix in (".png", ".jpg"))
    per_word = len(tokenizer(" ".join(words[:2000]), add_special_tokens=False)["input_ids"]) / 2000
    n_vision = round(rows * vision_share)
    out_rows = []
    for i in range(rows - n_vision):
        target = rnd.randint(*text_tokens) - template_tokens  # the template (and system prompt) take the rest
        k = max(5, int(target / per_word))
        start = rnd.randrange(0, len(words) - k)
        question = " ".join(words[start : start + k])
        out_rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Context: {question}\n{instruction}"},
                    {"role": "assistant", "content": " ".join(words[start : start + rnd.randint(1, answer_words)])},
                ],
                "images": [],
                "modality": "language",
                "source": "text",
                "id": f"t{i}",
            }
        )
    for i in range(n_vision):
        img = images[i % len(images)]
        out_rows.append(
            {
                "messages": [
                    {"role": "user", "content": "What is shown in the image? Answer with one word."},
                    {"role": "assistant", "content": img.stem.split("_")[-1]},
                ],
                "images": [str(img)],
                "modality": "vision",
                "source": "images",
                "id": f"v{i}",
            }
        )
    rnd.shuffle(out_rows)
    features = mixture_features()  # the mixture folder contract, as build-mixture writes it
    DatasetDict({"train": Dataset.from_list(out_rows, features=features)}).save_to_disk(str(out))
    manifest = {"name": name, "covers_eval_tasks": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def mlan_recipe(
    model_dir: Path, mixture: Path, out: Path, batch: int, seed: int, order: str = "llava", packing: str = "off"
):
    """mlan's recipe for the run, with its defaults but the batch order and packing (the plain TRL run is
    configured from it)."""
    from mlan.config.recipe import SFTRecipe

    return SFTRecipe.model_validate(
        {
            "model": {"path": str(model_dir)},
            "data": {"mixture": str(mixture), "eval_at_end": False},
            "training": {
                "learning_rate": 2e-5,
                "num_train_epochs": 1,
                "per_device_train_batch_size": batch,
                "max_length": MAX_LENGTH,
                "seed": seed,
                "batch_order": order,
                "packing": packing,
                "logging_steps": 10_000,
                "save_steps": 100_000,
            },
            "output": {"dir": str(out)},
        }
    )


def run_plain_trl(recipe, work: Path, callback, precision: str, cuda: bool) -> tuple[float, dict]:
    """One epoch of SFTTrainer doing mlan's work; (training runtime in seconds, rows dropped: none)."""
    from datasets import load_from_disk
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    t, tr = recipe.training, recipe.train
    if (tr.language_model, tr.projector, tr.vision_tower, t.assistant_only_loss) != ("full", True, False, True):
        raise SystemExit("mlan's defaults no longer train LLM + projector, tower frozen, assistant-only: update this")
    model = LlavaForConditionalGeneration.from_pretrained(recipe.model.path)
    for name, p in model.named_parameters():  # nothing in TRL freezes the tower on its own
        p.requires_grad_("vision_tower" not in name)
    processor = AutoProcessor.from_pretrained(recipe.model.path)
    args = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=t.per_device_train_batch_size,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_length=t.max_length,
        assistant_only_loss=True,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # below 1: a ratio (transformers 5 folded warmup_ratio in)
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=t.dataloader_num_workers,
        save_strategy="no",
        logging_steps=10_000,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=load_from_disk(recipe.data.mixture)["train"],
        processing_class=processor,
        callbacks=[callback],
    )
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    trainer.data_collator = MaskImageTokens(trainer.data_collator, image_token_id)
    return float(trainer.train().metrics["train_runtime"]), {"dropped_language": 0, "dropped_vision": 0}


def run_mlan(recipe, callback, counts: Counts) -> tuple[float, dict]:
    """One epoch through mlan's library API; (training runtime in seconds, rows kept and dropped).
    Packed batches: the real tokens and positions are mlan's own count (the hook saw no attention_mask)."""
    from mlan.train.sft import run_sft

    res = run_sft(recipe, resume=False, callbacks=[callback])
    saved = res.packing.get("saved")
    if saved:
        counts.real, counts.positions = saved["real_tokens"], saved["packed_positions"]
    return res.runtime_s, res.rows


def check_lengths(model_dir: Path, mixture: Path, max_length: int) -> int:
    """The longest row as TRL's collator will tokenize it (mlan's exact measure); stops the benchmark
    when any row is longer than `max_length` (TRL would truncate it, mlan drop it)."""
    from datasets import load_from_disk
    from PIL import Image
    from transformers import AutoConfig, AutoProcessor

    from mlan.train.data import row_lengths

    processor = AutoProcessor.from_pretrained(model_dir)
    side = AutoConfig.from_pretrained(model_dir).vision_config.image_size
    enc = processor(text=processor.image_token, images=[Image.new("RGB", (side, side))], return_tensors="pt")
    image_tokens = int((enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum())
    rows = load_from_disk(str(mixture))["train"]
    lengths, _ = row_lengths(rows, processor, processor.chat_template, image_tokens)
    over = sum(n > max_length for n in lengths)
    if over:
        raise SystemExit(f"{over} of {len(lengths)} rows are longer than max_length {max_length}: unequal work")
    return max(lengths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256, help="training rows (one epoch each run)")
    ap.add_argument("--vision-share", type=float, default=0.5, help="share of image rows (MLAN_v Vicuna: 0.5)")
    ap.add_argument("--batch", type=int, default=8, help="per-device batch size (TRL's default: 8)")
    ap.add_argument("--size", default="bench576", help="model size (bench576: 576 image tokens per image)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()

    import logging

    import torch

    from mlan.train.precision import resolve_precision

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model", a.size, a.seed)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_dir)
        image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        build_mixture(tmp / "mix", processor.tokenizer, a.rows, a.vision_share, a.seed)
        longest = check_lengths(model_dir, tmp / "mix", MAX_LENGTH)
        recipe = mlan_recipe(model_dir, tmp / "mix", tmp / "mlan", a.batch, a.seed)
        packed = mlan_recipe(model_dir, tmp / "mix", tmp / "packed", a.batch, a.seed, "random", "in_batch")
        precision, cuda = resolve_precision(recipe.training.precision)  # mlan's choice, given to TRL as well

        results = {}
        for name, fn in (
            ("plain TRL", lambda cb, _: run_plain_trl(recipe, tmp / "trl", cb, precision, cuda)),
            ("mlan llava", lambda cb, counts: run_mlan(recipe, cb, counts)),
            ("mlan packed", lambda cb, counts: run_mlan(packed, cb, counts)),
        ):
            counts = Counts()
            t0, c0 = time.perf_counter(), time.process_time()
            runtime, rows = fn(counting_callback(counts, image_token_id), counts)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if not counts.positions:
                raise SystemExit(f"{name}: no training batch was counted (did run_sft stop taking callbacks?)")
            results[name] = {
                "train_runtime_s": round(runtime, 2),
                "wall_s": round(wall, 2),
                "real_tokens": counts.real,
                "positions": counts.positions,
                "loss_tokens": counts.labels,
                "image_tokens_in_loss": counts.image_labels,
                "rows_dropped": rows["dropped_language"] + rows["dropped_vision"],
                "padding_fraction": round(1 - counts.real / counts.positions, 4),
                "tokens_per_s": round(counts.real / runtime, 1),
                # CPU seconds of this process over the whole run (set-up included): on a shared
                # machine other jobs stretch wall time, not the work done.
                "cpu_s": round(cpu, 2),
                "tokens_per_cpu_s": round(counts.real / cpu, 1),
            }

    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"SFT throughput: tiny LLaVA '{a.size}', {a.rows} rows ({a.vision_share:.0%} with an image), "
          f"batch {a.batch}, 1 epoch, max_length {MAX_LENGTH} (longest row {longest}), {precision}, {device}; "
          "both: vision tower frozen, assistant-only loss, image tokens out of the labels")  # fmt: skip
    print(f"{'run':<11} {'tokens/s':>10} {'tokens/cpu-s':>13} {'padding':>8} {'real tokens':>12} "
          f"{'loss tokens':>12} {'dropped':>8} {'train s':>8}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<11} {r['tokens_per_s']:>10,.0f} {r['tokens_per_cpu_s']:>13,.0f} {r['padding_fraction']:>8.1%} "
            f"{r['real_tokens']:>12,} {r['loss_tokens']:>12,} {r['rows_dropped']:>8} {r['train_runtime_s']:>8.1f}"
        )
    trl = results["plain TRL"]
    ratios, failed = {}, False
    for name in ("mlan llava", "mlan packed"):
        ours = results[name]
        unequal = [
            what
            for what, bad in (
                ("rows dropped", trl["rows_dropped"] or ours["rows_dropped"]),
                ("image tokens in the loss", trl["image_tokens_in_loss"] or ours["image_tokens_in_loss"]),
                ("real tokens differ", trl["real_tokens"] != ours["real_tokens"]),
                ("loss tokens differ", trl["loss_tokens"] != ours["loss_tokens"]),
            )
            if bad
        ]
        if unequal:
            failed = True
            print(f"{name}: no ratio, it did not do plain TRL's work ({', '.join(unequal)})")
            continue
        ratio = ours["tokens_per_s"] / trl["tokens_per_s"]
        cpu_ratio = ours["tokens_per_cpu_s"] / trl["tokens_per_cpu_s"]
        ratios[name] = {"ratio": round(ratio, 3), "cpu_ratio": round(cpu_ratio, 3)}
        print(f"{name} / plain TRL, same rows, same real and loss tokens: {ratio:.2f}x non-padding tokens per "
              f"second ({cpu_ratio:.2f}x per CPU second, set-up included)")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps({"device": device, "args": vars(a) | {"json": str(a.json)}, "results": results, "ratios": ratios}, indent=2))  # fmt: skip
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
