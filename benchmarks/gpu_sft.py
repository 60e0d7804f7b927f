"""GPU SFT: tokens/s, model FLOPs utilisation and peak memory of a ~1B LLaVA, plain TRL vs mlan; QLoRA once.

A LLaVA built from config with random weights, saved in bf16: a Llama-architecture LLM shaped like
Llama-3.2-1B (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192; 0.98B parameters with the
2,048-token BPE of `mlan.tiny`, whose small vocabulary keeps the head cheap: a 32k vocabulary would
add 0.13B) and a CLIP ViT-L/14-336 tower (24 x 1024, 336 px, patch 14: 576 image tokens; 0.30B).
The rows are MLAN-style (`--vision-share` 12.5% by default, as MLAN_v): text rows of 100-500
tokens from the bundled SQuAD / CosmosQA / ARC text with a short answer, image rows of one bundled
image (576 image tokens) and a short question.

Runs, each `--steps` timed optimizer steps after `--warmup` untimed ones, same rows, batch size,
learning rate and seed, bf16 weights and autocast (as the shipped 7B recipes), gradient checkpointing
off (the 7B recipes turn it on; a 1B model fits without), attention kernel `--attn` in every run
(auto: flash_attention_2 when flash-attn is installed, else sdpa):
- plain TRL: `SFTTrainer` learning what mlan's recipe learns (vision tower frozen, assistant-only
  loss), TRL's random order;
- mlan llava: `run_sft` with `batch_order: llava` and `packing: off` (padded batches);
- mlan packed: `run_sft` in plain TRL's random order with `packing: in_batch` (each batch's rows,
  image rows included, packed without padding: one row of variable-length rows with flash-attn,
  bins sized by cost with sdpa);
- QLoRA: `run_sft` with `train.language_model: qlora` (bitsandbytes 4-bit NF4), `--qlora-steps`
  steps, to show the path trains on this GPU (its loss and memory are printed, not compared).

Printed per run: non-padding tokens per second, MFU, padding fraction, peak GPU memory (allocated,
`torch.cuda.max_memory_allocated`), and mlan's step time split when `train_results.json` has one.
MFU = 6 * N * tokens/s / peak, with N the LLM's parameters without the input embedding (a lookup)
and tokens the non-padding positions the LLM processes (image tokens included); the frozen tower's
forward (2 * 0.30B per image patch) and attention FLOPs are not counted, so it is a lower bound.
Peak: dense bf16 without sparsity, from the GPU's name (H100 SXM / H200: 989 TFLOPS, H100 NVL 835,
H100 PCIe 756, A100 312), or `--peak-tflops`.

    python benchmarks/gpu_sft.py                 # sized for under 8 minutes on one H100 (not yet run on one)
    python benchmarks/gpu_sft.py --cpu-smoke     # every path at toy size on a CPU, 3 steps each (~20 s)
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 peak TFLOPS (no sparsity) by a substring of torch.cuda.get_device_name(), most specific first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
)

# Shapes (mlan.tiny.TinySize fields). "gpu1b": Llama-3.2-1B's LLM shape, CLIP ViT-L/14-336's tower.
# "smoke": small enough for a CPU, still 576 image tokens (96 px, patch 4) so the row shapes are real.
SHAPES = {
    "gpu1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vision_hidden=1024,
                  vision_layers=24, vision_heads=16, image_size=336, patch_size=14, vision_intermediate=4096),
    "smoke": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32,
                  vision_layers=1, vision_heads=2, image_size=96, patch_size=4),
}  # fmt: skip


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((tf for key, tf in PEAK_TFLOPS if key in name), None)


# --------------------------------------------------------------------------- model and rows


def build_model(out: Path, shape: str, seed: int) -> Path:
    """A LLaVA of `shape` with random weights, saved in bf16 with its processor."""
    import torch

    from mlan import tiny

    tiny.SIZES.setdefault(f"bench_{shape}", tiny.TinySize(**SHAPES[shape]))
    model, processor = tiny.build_tiny_llava(f"bench_{shape}", seed)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    del model
    gc.collect()
    return out


def build_mixture(out: Path, tokenizer, rows: int, vision_share: float, seed: int) -> None:
    """A mixture folder (the mixture-stage contract) of MLAN-style rows: text rows of 100-500 tokens,
    image rows of one image and a short question (sft_throughput's builder, with longer rows)."""
    from sft_throughput import build_mixture as build

    # the template takes ~40 tokens here (no system prompt counted in these lengths)
    build(out, tokenizer, rows, vision_share, seed, text_tokens=(100, 500), template_tokens=40,
          instruction="Answer briefly.", answer_words=12, name="gpu_sft")  # fmt: skip


# --------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    name: str
    attn: str
    steps: int = 0
    real: int = 0  # non-padding positions of the timed steps
    positions: int = 0  # all positions of the timed steps
    seconds: float = 0.0  # wall time of the timed steps
    peak_bytes: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    split: dict | None = None
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.real / self.seconds if self.seconds else 0.0


def measuring_callback(m: Measured, warmup: int):
    """Times the steps after `warmup` (each boundary after the GPU's queued work) and counts the
    positions the model is given (a forward pre-hook: batches are collated in dataloader workers)."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class Measure(TrainerCallback):
        counting = False

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            pad_token_id = getattr(processing_class, "tokenizer", processing_class).pad_token_id

            def count(module, a, kw):
                if not (self.counting and module.training):
                    return
                mask, ids = kw.get("attention_mask"), kw.get("input_ids")
                if mask is not None:
                    m.real += int(mask.sum())
                    m.positions += mask.numel()
                elif ids is not None:
                    # A packed batch (no mask): its only padding is the bins' tails, of `<pad>` tokens,
                    # which mlan.tiny's tokenizer never puts inside a row.
                    m.real += int((ids != pad_token_id).sum())
                    m.positions += ids.numel()

            self.hook = model.register_forward_pre_hook(count, with_kwargs=True)
            if warmup == 0:
                self.counting, self.t0 = True, now()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.counting, self.t0 = True, now()
            elif state.global_step > warmup:
                # The clock stops at the last step's end, not at on_train_end (after the loop's wrap-up).
                m.seconds = now() - self.t0
                m.steps = state.global_step - warmup

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                m.first_loss = logs["loss"] if m.first_loss is None else m.first_loss
                m.last_loss = logs["loss"]

        def on_train_end(self, args, state, control, **kwargs):
            self.hook.remove()

    return Measure()


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


# --------------------------------------------------------------------------- the runs


def recipe_for(a, model_dir: Path, mixture: Path, out: Path, changes: dict):
    """An SFT recipe for this benchmark (the shipped 7B recipes' settings at this size) with `changes`
    (dotted keys) applied."""
    import torch

    from mlan.config.recipe import SFTRecipe

    cuda = torch.cuda.is_available()
    data = {
        "model": {"path": str(model_dir), "dtype": "bfloat16" if cuda else "float32", "attn_implementation": a.attn},
        "train": {"language_model": "full", "projector": True, "vision_tower": False},
        "data": {"mixture": str(mixture), "eval_at_end": False},
        "training": {
            "learning_rate": 2e-5,
            "max_steps": a.warmup + a.steps,
            "per_device_train_batch_size": a.batch,
            "max_length": 2048,
            "seed": a.seed,
            "precision": "bf16" if cuda else "fp32",
            "gradient_checkpointing": a.gradient_checkpointing,
            "batch_order": "llava",
            "logging_steps": 1,
            "save_steps": 100_000,
            "dataloader_num_workers": a.workers,
        },
        "output": {"dir": str(out)},
    }
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return SFTRecipe.model_validate(data)


def run_mlan(a, m: Measured, recipe) -> None:
    from mlan.train.sft import run_sft

    free_gpu()
    res = run_sft(recipe, resume=False, overwrite=True, callbacks=[measuring_callback(m, a.warmup)])
    m.peak_bytes = peak_bytes()
    results = json.loads((res.output_dir / "train_results.json").read_text(encoding="utf-8"))
    m.split = results.get("step_time_split")
    packing = results.get("packing")
    if isinstance(packing, dict) and packing.get("on"):
        m.note = f"packing: {packing.get('reason', '')}"


def run_plain_trl(a, m: Measured, model_dir: Path, mixture: Path, out: Path) -> None:
    """SFTTrainer learning what mlan's recipe learns: vision tower frozen, assistant-only loss."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    free_gpu()
    cuda = torch.cuda.is_available()
    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation=a.attn
    )
    for name, p in model.named_parameters():  # the recipe's frozen tower: TRL freezes nothing on its own
        p.requires_grad_("vision_tower" not in name)
    args = SFTConfig(
        output_dir=str(out),
        assistant_only_loss=True,
        learning_rate=2e-5,
        max_steps=a.warmup + a.steps,
        per_device_train_batch_size=a.batch,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        seed=a.seed,
        use_cpu=not cuda,
        bf16=cuda,
        activation_checkpointing=a.gradient_checkpointing,
        max_length=None,  # as mlan: no row is cut (a cut would split an image's tokens)
        dataloader_num_workers=a.workers,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=load_from_disk(str(mixture))["train"],
        processing_class=AutoProcessor.from_pretrained(model_dir),
        callbacks=[measuring_callback(m, a.warmup)],
    )
    # The Trainer's progress bar and its dict printed every step: mlan's runs show neither.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    m.peak_bytes = peak_bytes()
    del trainer, model


# --------------------------------------------------------------------------- the table


def llm_parameters(model_dir: Path) -> tuple[int, int]:
    """(LLM parameters without the input embedding, vision tower parameters), from a weightless copy."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights():
        model = LlavaForConditionalGeneration._from_config(config)
    llm = sum(
        p.numel() for n, p in model.named_parameters() if "vision_tower" not in n and "multi_modal_projector" not in n
    )
    llm -= model.get_input_embeddings().weight.numel()
    tower = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n)
    return llm, tower


def fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def fmt_split(split) -> str:
    """ms per step of data / forward+backward / optimizer, from mlan's step_time_split."""
    if not isinstance(split, dict) or not isinstance(split.get("seconds"), dict) or not split.get("steps"):
        return ""
    sec, steps = split["seconds"], split["steps"]
    return " / ".join(f"{sec.get(k, 0) / steps * 1000:.0f}" for k in ("data", "forward_backward", "optimizer"))


def report(results: list[Measured], a, device: str, peak: float | None, n_llm: int, n_tower: int) -> None:
    print(f"\nGPU SFT: LLaVA '{a.shape}' (LLM {fmt_params(n_llm)} without input embedding, tower {fmt_params(n_tower)}), "
          f"{a.rows} rows ({a.vision_share:.1%} with an image), batch {a.batch}, {a.steps} timed steps after "
          f"{a.warmup}, {device}")  # fmt: skip
    print(f"MFU = 6 x {fmt_params(n_llm)} x tokens/s / " + (f"{peak:g} TFLOPS (dense bf16)" if peak else "peak unknown (--peak-tflops)"))  # fmt: skip
    print(f"{'run':<22} {'attn':<18} {'tokens/s':>10} {'MFU':>6} {'padding':>8} {'peak GiB':>9} {'loss':>15}  "
          "ms/step data / fwd+bwd / optimizer")  # fmt: skip
    base = next((r for r in results if r.name == "plain TRL" and r.seconds), None)
    for r in results:
        if not r.seconds:
            print(f"{r.name:<22} {r.note}")
            continue
        mfu = f"{6 * n_llm * r.tokens_per_s / (peak * 1e12):.1%}" if peak else "n/a"
        pad = 1 - r.real / r.positions if r.positions else 0.0
        loss = f"{r.first_loss:.2f} -> {r.last_loss:.2f}" if r.first_loss is not None else "-"
        print(f"{r.name:<22} {r.attn:<18} {r.tokens_per_s:>10,.0f} {mfu:>6} {pad:>8.1%} "
              f"{r.peak_bytes / 2**30:>9.1f} {loss:>15}  {fmt_split(r.split)}")  # fmt: skip
        if r.note:
            print(f"{'':<22} {r.note}")
    for r in results:
        if base and r is not base and r.seconds and r.name != "QLoRA":
            print(f"{r.name} / plain TRL: {r.tokens_per_s / base.tokens_per_s:.2f}x tokens/s")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (kernels, allocator, workers)")
    ap.add_argument("--batch", type=int, default=16, help="rows per step")
    ap.add_argument("--vision-share", type=float, default=0.125, help="share of image rows (MLAN_v: 0.125)")
    ap.add_argument("--attn", default="auto", help="attention kernel of every run (auto: flash_attention_2 if installed, else sdpa)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=4, help="dataloader workers (the shipped 7B recipes: 4)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="trade speed for memory (off: a 1B model fits)")  # fmt: skip
    ap.add_argument("--qlora-steps", type=int, default=10, help="steps of the QLoRA run (0: skip it)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on a CPU, a few steps: every path up to the GPU")  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()

    import torch

    if not torch.cuda.is_available() and not a.cpu_smoke:
        raise SystemExit("gpu_sft.py: no CUDA GPU found; this benchmark measures a GPU (--cpu-smoke runs its paths at toy size on a CPU)")  # fmt: skip
    if a.cpu_smoke:
        a.shape, a.steps, a.warmup, a.batch, a.workers = "smoke", min(a.steps, 2), min(a.warmup, 1), min(a.batch, 4), 0
        a.qlora_steps = min(a.qlora_steps, 2)
    else:
        a.shape = "gpu1b"
    flash = importlib.util.find_spec("flash_attn") is not None
    if a.attn == "auto":
        a.attn = "flash_attention_2" if flash and not a.cpu_smoke else "sdpa"
    a.rows = max(64, (a.warmup + a.steps) * a.batch)

    from mlan.config.recipe import TrainingSection
    from mlan.lab.run import quiet_libraries

    logging.basicConfig(level=logging.WARNING)
    # bitsandbytes (imported by peft) warns on import that a CPU kernel package is missing: not used here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    quiet_libraries()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    peak = peak_tflops(device, a.peak_tflops) if torch.cuda.is_available() else a.peak_tflops
    results: list[Measured] = []
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = build_model(tmp / "model", a.shape, a.seed)
        from transformers import AutoProcessor

        build_mixture(tmp / "mix", AutoProcessor.from_pretrained(model_dir).tokenizer, a.rows, a.vision_share, a.seed)
        n_llm, n_tower = llm_parameters(model_dir)
        print(f"model and rows built in {time.perf_counter() - t0:.0f} s", flush=True)

        # Each run: None (plain TRL), the recipe changes of an mlan run, or why it is skipped.
        has_option = "packing" in TrainingSection.model_fields
        runs: list[tuple[str, dict | str | None]] = [
            ("plain TRL", None),
            ("mlan llava", {"training.packing": "off"} if has_option else {}),
        ]
        if not has_option:
            runs.append(("mlan packed", "skipped: this mlan has no training.packing"))
        else:
            runs.append(("mlan packed", {"training.batch_order": "random", "training.packing": "in_batch"}))
        if a.qlora_steps and importlib.util.find_spec("bitsandbytes") is None:
            runs.append(("QLoRA", "skipped: bitsandbytes is not installed"))
        elif a.qlora_steps:
            # The shipped QLoRA recipe's rate (recipes/vicuna_qlora.yaml): adapters train at 10x the full rate.
            qlora = {"train.language_model": "qlora", "training.learning_rate": 2e-4}
            runs.append(("QLoRA", qlora | {"training.max_steps": a.warmup + a.qlora_steps}))
        for i, (name, how) in enumerate(runs):
            m = Measured(name, a.attn)
            results.append(m)
            if isinstance(how, str):
                m.note = how
                print(f"{name}: {how}", flush=True)
                continue
            t_run = time.perf_counter()
            try:
                if how is None:
                    run_plain_trl(a, m, model_dir, tmp / "mix", tmp / f"run{i}")
                else:
                    run_mlan(a, m, recipe_for(a, model_dir, tmp / "mix", tmp / f"run{i}", how))
            except Exception as e:  # one failed path is reported, the others still measured
                failed = True
                m.seconds = 0.0
                m.note = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                traceback.print_exc()
            print(f"{name}: {time.perf_counter() - t_run:.0f} s", flush=True)
            free_gpu()
    report(results, a, device, peak, n_llm, n_tower)
    if a.json:
        a.json.write_text(json.dumps({"device": device, "peak_tflops": peak, "n_llm": n_llm, "args": {k: str(v) for k, v in vars(a).items()},
                                      "runs": [vars(r) | {"tokens_per_s": r.tokens_per_s} for r in results]}, indent=2))  # fmt: skip
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
