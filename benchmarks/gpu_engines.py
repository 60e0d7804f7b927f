"""GPU SFT by engine: tokens/s and peak memory of one process, DeepSpeed ZeRO-3 and FSDP2 at world size 1.

The same LLaVA and MLAN-style rows as benchmarks/gpu_sft.py (its model builder and rows: a Llama-3.2-1B-shaped
LLM with CLIP ViT-L/14-336, random weights saved in bf16; `--shape gpu3b` for a 3B LLM), trained by `mlan sft`
under `torchrun --nproc-per-node 1` with `training.engine` one of:
- `ddp` (one process: mlan's default precision plan, fp32 trainable parameters under bf16 autocast),
- `zero3` (DeepSpeed ZeRO-3 with recipes/deepspeed/zero3.json: its bf16 optimizer's fp32 masters),
- `fsdp2` (FSDP2, each decoder and encoder layer sharded; accelerate's fp32 upcast, bf16 compute).
At world size 1 nothing is split: the figures show each engine's cost over one process (ZeRO-3 and FSDP2
gather and keep masters; ZeRO-3 keeps bf16 working weights and fp32 masters), the price of the engines
the 7B-34B recipes need on several GPUs. Each run: `--steps` timed optimizer steps after `--warmup`,
same rows, batch, learning rate, seed, gradient checkpointing on (as the 7B recipes). Printed: non-padding
tokens/s, ratio to the one-process run measured in the same invocation, peak GPU memory
(`torch.cuda.max_memory_allocated`), first and last loss, and each run's precision plan as mlan recorded it.

    python benchmarks/gpu_engines.py                  # one GPU, a few minutes (not yet run on one)
    python benchmarks/gpu_engines.py --cpu-smoke      # one process and ZeRO-3 at toy size on a CPU (FSDP2 needs a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import gpu_sft  # noqa: E402  (the model, rows, recipe and measuring of the GPU SFT benchmark)

gpu_sft.SHAPES.setdefault(
    "gpu3b",  # Llama-3.2-3B's LLM shape, the same tower
    dict(hidden=3072, layers=28, heads=24, kv_heads=8, intermediate=8192, vision_hidden=1024,
         vision_layers=24, vision_heads=16, image_size=336, patch_size=14, vision_intermediate=4096),
)  # fmt: skip


def worker(recipe_json: Path, out_json: Path, warmup: int) -> None:
    """One engine's run, in a process torchrun started: mlan sft with the measuring callback."""
    from mlan.config.recipe import SFTRecipe
    from mlan.lab.run import quiet_libraries
    from mlan.train.sft import run_sft

    quiet_libraries()
    recipe = SFTRecipe.model_validate(json.loads(recipe_json.read_text()))
    m = gpu_sft.Measured(recipe.training.engine, recipe.model.attn_implementation or "sdpa")
    gpu_sft.free_gpu()
    res = run_sft(recipe, resume=False, overwrite=True, callbacks=[gpu_sft.measuring_callback(m, warmup)])
    m.peak_bytes = gpu_sft.peak_bytes()
    if res.is_main_process:
        results = json.loads((res.output_dir / "train_results.json").read_text())
        out_json.write_text(json.dumps(vars(m) | {"tokens_per_s": m.tokens_per_s, "results": results}))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed optimizer steps per engine")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8, help="rows per step")
    ap.add_argument("--shape", default="gpu1b", choices=["gpu1b", "gpu3b"])
    ap.add_argument("--engines", default="ddp,zero3,fsdp2")
    ap.add_argument("--vision-share", type=float, default=0.125)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(*a.worker, a.warmup)

    import torch

    if not torch.cuda.is_available() and not a.cpu_smoke:
        raise SystemExit("gpu_engines.py: no CUDA GPU found (--cpu-smoke runs one process and ZeRO-3 at toy size)")
    if a.cpu_smoke:
        a.shape, a.steps, a.warmup, a.batch, a.engines = "smoke", 2, 1, 4, "ddp,zero3"
    a.workers, a.gradient_checkpointing = 0 if a.cpu_smoke else 4, True
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    rows = max(64, (a.warmup + a.steps) * a.batch)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from transformers import AutoProcessor

        model = gpu_sft.build_model(tmp / "model", a.shape, a.seed)
        gpu_sft.build_mixture(tmp / "mix", AutoProcessor.from_pretrained(model).tokenizer, rows, a.vision_share, a.seed)
        for engine in a.engines.split(","):
            recipe = gpu_sft.recipe_for(a, model, tmp / "mix", tmp / engine, {"training.engine": engine})
            (tmp / f"{engine}.json").write_text(json.dumps(recipe.model_dump(mode="json")))
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "1",
                "--master-port",
                str(_port()),
            ]
            cmd += [
                __file__,
                "--warmup",
                str(a.warmup),
                "--worker",
                str(tmp / f"{engine}.json"),
                str(tmp / f"{engine}.out"),
            ]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "4"})
            out = tmp / f"{engine}.out"
            run = (
                json.loads(out.read_text())
                if done.returncode == 0 and out.is_file()
                else {"name": engine, "failed": True}
            )
            run["wall_s"] = round(time.perf_counter() - t0, 1)
            runs.append(run)
    base = next((r["tokens_per_s"] for r in runs if r["name"] == "ddp" and not r.get("failed")), None)
    print(f"\nGPU SFT by engine, world size 1, {a.shape}, {device}; {a.steps} timed steps of {a.batch} rows")
    print(
        f"{'engine':8} {'tokens/s':>10} {'vs one process':>15} {'peak GiB':>9} {'loss first/last':>17}  master weights"
    )
    for r in runs:
        if r.get("failed"):
            print(f"{r['name']:8} FAILED (see the output above)")
            continue
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "n/a"
        losses = f"{r['first_loss']:.3f}/{r['last_loss']:.3f}" if r["first_loss"] is not None else "n/a"
        plan = r["results"]["precision_plan"]["description"]
        print(
            f"{r['name']:8} {r['tokens_per_s']:>10,.0f} {ratio:>15} {r['peak_bytes'] / 2**30:>9.1f} {losses:>17}  {plan}"
        )
    if a.json:
        a.json.write_text(
            json.dumps({"device": device, "args": {k: str(v) for k, v in vars(a).items()}, "runs": runs}, indent=2)
        )
    if any(r.get("failed") for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
