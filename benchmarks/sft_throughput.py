"""SFT throughput: plain TRL defaults vs mlan's settings, same model, same MLAN_v-style mixture.

Both runs train one epoch over the same rows with the same batch size, learning rate and seed:
- plain TRL: `SFTTrainer` with `SFTConfig` defaults (random batches, nothing frozen, loss on
  every token) except what a CPU needs (`use_cpu`, no bf16) and gradient checkpointing off in
  both runs (it only trades speed for memory and would blur the comparison);
- mlan: `mlan.train.sft.run_sft` on the same model and mixture (batches grouped by modality and
  length, vision tower frozen, assistant-only loss, over-long rows dropped instead of truncated).

The mixture mimics MLAN_v: language rows of 100-400 tokens built from the bundled SQuAD /
CosmosQA / ARC text, vision rows of one bundled image (576 image tokens, as CLIP ViT-L/14-336
gives LLaVA-1.5) plus a short question. Printed: non-padding tokens per second of each run,
their ratio and the padding fraction (padded positions / all positions in the batches).

    python benchmarks/sft_throughput.py                 # ~7 min on 2 CPU cores
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

COUNTS = {"real": 0, "padded": 0}


def count_padding() -> None:
    """Count real and padded positions of every batch TRL's vision collator makes (both runs use it).

    Patched here, in the benchmark process only: neither TRL nor the Trainer reports padding.
    """
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    original = DataCollatorForVisionLanguageModeling.torch_call

    def torch_call(self, examples):
        out = original(self, examples)
        COUNTS["real"] += int(out["attention_mask"].sum())
        COUNTS["padded"] += int(out["attention_mask"].numel())
        return out

    DataCollatorForVisionLanguageModeling.torch_call = torch_call


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


def run_plain_trl(model_dir: Path, mixture: Path, work: Path, batch: int, seed: int) -> float:
    """One epoch with SFTTrainer's defaults; returns the training runtime in seconds."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(work),
        per_device_train_batch_size=batch,
        learning_rate=2e-5,
        num_train_epochs=1,
        seed=seed,
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=False,
        save_strategy="no",
        logging_steps=10_000,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=LlavaForConditionalGeneration.from_pretrained(model_dir),
        args=args,
        train_dataset=load_from_disk(str(mixture))["train"],
        processing_class=AutoProcessor.from_pretrained(model_dir),
    )
    return float(trainer.train().metrics["train_runtime"])


def run_mlan(model_dir: Path, mixture: Path, out: Path, batch: int, seed: int) -> float:
    """One epoch through mlan's library API; returns the training runtime in seconds."""
    import torch

    from mlan.config.recipe import SFTRecipe
    from mlan.train.sft import run_sft

    recipe = SFTRecipe.model_validate(
        {
            "model": {"path": str(model_dir)},
            "data": {"mixture": str(mixture), "eval_at_end": False},
            "training": {
                "learning_rate": 2e-5,
                "num_train_epochs": 1,
                "per_device_train_batch_size": batch,
                "max_length": 2048,
                "seed": seed,
                "precision": "bf16" if torch.cuda.is_available() else "fp32",
                "logging_steps": 10_000,
                "save_steps": 100_000,
            },
            "output": {"dir": str(out)},
        }
    )
    return run_sft(recipe, resume=False).runtime_s


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

    logging.basicConfig(level=logging.WARNING)
    count_padding()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_model(tmp / "model", a.size, a.seed)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_dir)
        build_mixture(tmp / "mix", processor.tokenizer, a.rows, a.vision_share, a.seed)

        results = {}
        for name, fn in (
            ("plain TRL", lambda: run_plain_trl(model_dir, tmp / "mix", tmp / "trl", a.batch, a.seed)),
            ("mlan", lambda: run_mlan(model_dir, tmp / "mix", tmp / "mlan", a.batch, a.seed)),
        ):
            COUNTS.update(real=0, padded=0)
            t0, c0 = time.perf_counter(), time.process_time()
            runtime = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            results[name] = {
                "train_runtime_s": round(runtime, 2),
                "wall_s": round(wall, 2),
                "real_tokens": COUNTS["real"],
                "padded_positions": COUNTS["padded"],
                "padding_fraction": round(1 - COUNTS["real"] / COUNTS["padded"], 4),
                "tokens_per_s": round(COUNTS["real"] / runtime, 1),
                # CPU seconds of this process over the whole run (set-up included): on a shared
                # machine other jobs stretch wall time, not the work done.
                "cpu_s": round(cpu, 2),
                "tokens_per_cpu_s": round(COUNTS["real"] / cpu, 1),
            }

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"SFT throughput: tiny LLaVA '{a.size}', {a.rows} rows ({a.vision_share:.0%} with an image), "
          f"batch {a.batch}, 1 epoch, {device}")  # fmt: skip
    print(f"{'run':<10} {'tokens/s':>10} {'tokens/cpu-s':>13} {'padding':>8} {'real tokens':>12} {'train s':>8}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['tokens_per_s']:>10,.0f} {r['tokens_per_cpu_s']:>13,.0f} {r['padding_fraction']:>8.1%} "
            f"{r['real_tokens']:>12,} {r['train_runtime_s']:>8.1f}"
        )
    ratio = results["mlan"]["tokens_per_s"] / results["plain TRL"]["tokens_per_s"]
    cpu_ratio = results["mlan"]["tokens_per_cpu_s"] / results["plain TRL"]["tokens_per_cpu_s"]
    print(f"mlan / plain TRL: {ratio:.2f}x non-padding tokens per second ({cpu_ratio:.2f}x per CPU second)")
    if a.json:
        a.json.write_text(json.dumps({"device": device, "args": vars(a) | {"json": str(a.json)}, "results": results, "ratio": ratio, "cpu_ratio": cpu_ratio}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
