"""Wings cost benchmark: parameters added, forward / training-step / generation time and memory,
with and without the learners, on the same model and the same mixed batch, in one run.

Model: the offline tiny LLaVA of size `base` (Llama text model, hidden 512, 6 layers, ~20M
parameters) unless `--size` says otherwise. Batch: `--batch` rows alternating image questions and
longer text-only multiple-choice questions from the bundled ARC-Easy slice, left-padded, exactly
as the processor builds them. Variants, each on a fresh copy of the same model:

- base (sdpa)             the LLaVA model alone, SDPA attention
- wings modality (sdpa)   + Wings learners, modality router (SDPA trick for the attention mass)
- base (eager)            the LLaVA model alone, eager attention
- wings modality (eager)  + Wings, modality router read off the eager probabilities
- wings attention (eager) + Wings, the paper's position-indexed router (needs eager)

Each variant trains like Wings stage 2 (language model + projector [+ learners + router]; vision
tower frozen), so the training step does the same work apart from the learners. Times are the
best of `--repeats` after one warm-up, taken round-robin over the variants (so that load from
other processes falls on all of them alike; other load only ever adds time). Memory: on CUDA the
peak allocated memory of one training step above what was allocated before it; on CPU (no
allocator statistics) the bytes of
the tensors kept for backward plus the gradients of one training step, counted with
torch.autograd's saved-tensor hooks (storages counted once). Ratios are against the base model
with the same attention kernel.

Run: .venv/bin/python benchmarks/wings_overhead.py [--size base] [--rank 8] [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_batch(processor, rows: int):
    from PIL import Image

    from mlan.paths import BUNDLED_DATA_DIR

    image_files = sorted((BUNDLED_DATA_DIR / "images").glob("*.png"))
    questions = [json.loads(line) for line in (BUNDLED_DATA_DIR / "arc_easy" / "validation.jsonl").open()]
    texts, images = [], []
    for i in range(rows):
        q = questions[i % len(questions)]
        if i % 2 == 0:
            content = [{"type": "image"}, {"type": "text", "text": "Describe the image in one sentence."}]
            images.append(Image.open(image_files[i % len(image_files)]).convert("RGB"))
        else:
            choices = " ".join(
                f"{label}. {text}" for label, text in zip(q["choices"]["label"], q["choices"]["text"], strict=True)
            )
            content = f"{q['question']} {choices} Answer with the letter."
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def timed_round_robin(fn, models, repeats: int, sync, clock) -> list[list[float]]:
    """Seconds of each repeat of `fn(model)`, per model; the repeats go round the models in turn, so that
    load from other processes on a shared machine falls on every variant alike."""
    for model in models:  # warm-up
        fn(model)
    sync()
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, model in enumerate(models):
            t = clock()
            fn(model)
            sync()
            times[i].append(clock() - t)
    return times


def train_step(model, inputs, labels):
    model.zero_grad(set_to_none=True)
    model(**inputs, labels=labels).loss.backward()


def step_memory(model, inputs, labels, device) -> int:
    """Bytes of one training step (see the module docstring for what is counted where)."""
    import torch

    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, inputs, labels)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_step(model, inputs, labels)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return sum(seen.values()) + grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", help="mlan.tiny size (tiny, small, base)")
    parser.add_argument("--rank", type=int, default=8, help="Wings rank (8 at hidden 512 is the paper's r/d = 64/4096)")
    parser.add_argument("--batch", type=int, default=8, help="rows, alternating image and text-only")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated in the generation timing")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: timings in this thread's CPU time, see above)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from mlan.tiny import build_tiny_llava
    from mlan.wings import WingsConfig, add_wings, wings_parameter_groups, wings_parameters

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    # On one CPU thread all of torch's work runs in this thread, and its CPU time does not grow
    # while other processes hold the cores; wall time on a shared machine varied 6x for one step.
    cpu_clock = device.type == "cpu" and args.threads == 1
    clock = time.thread_time if cpu_clock else time.perf_counter
    torch.manual_seed(0)
    base, processor = build_tiny_llava(args.size, seed=0)
    dtype = getattr(torch, args.dtype)
    base = base.to(dtype)
    inputs = build_batch(processor, args.batch).to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    n_image = sum(1 for i in range(args.batch) if i % 2 == 0)
    print(
        f"model: tiny LLaVA '{args.size}' ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters), "
        f"batch {args.batch} rows ({n_image} with an image, {args.batch - n_image} text-only) x "
        f"{inputs['input_ids'].shape[1]} tokens, rank {args.rank}, {args.dtype}, "
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else f'cpu ({torch.get_num_threads()} threads)'}, "
        f"times in {'thread CPU' if cpu_clock else 'wall-clock'} ms"
    )

    variants = [
        ("base (sdpa)", "sdpa", None),
        ("wings modality (sdpa)", "sdpa", "modality"),
        ("base (eager)", "eager", None),
        ("wings modality (eager)", "eager", "modality"),
        ("wings attention (eager)", "eager", "attention"),
    ]
    results = []
    models = []
    for name, attn, router in variants:
        model = copy.deepcopy(base).to(device)
        model.set_attn_implementation(attn)
        added = 0
        if router:
            config = WingsConfig(rank=args.rank, router=router, router_max_positions=1024)
            add_wings(model, config)
            added = sum(p.numel() for p in wings_parameters(model))
            # Non-zero learners (B starts at 0): compute is the same, but nothing can be skipped.
            with torch.no_grad():
                for p in wings_parameters(model):
                    p.normal_(0, 0.02)
            wings_parameter_groups(model, 2, config)
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            for module in (model.model.language_model, model.model.multi_modal_projector, model.lm_head):
                for p in module.parameters():
                    p.requires_grad_(True)
        models.append(model)
        results.append({"variant": name, "attn": attn, "params_added": added})

    def forward(model):
        with torch.no_grad():
            model(**inputs)

    def generate(model):
        model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)

    for key, fn, train, repeats in (
        ("forward_s", forward, False, args.repeats),
        ("generate_s", generate, False, max(1, args.repeats // 2)),
        ("train_step_s", lambda model: train_step(model, inputs, labels), True, args.repeats),
    ):
        for model in models:
            model.train(train)
        for r, t in zip(results, timed_round_robin(fn, models, repeats, sync, clock), strict=True):
            # Best of N: on a shared machine other processes only ever add time, and by several
            # times at moments (seen here: 0.8 s vs 5 s for the same step), which medians do not remove.
            r[key] = min(t)
            r[key + "_all"] = t
        print(f"  timed {key[:-2]}", file=sys.stderr)
    for r, model in zip(results, models, strict=True):
        r["memory_bytes"] = step_memory(model, inputs, labels, device)
    del models

    base_of = {r["attn"]: r for r in results if r["params_added"] == 0}
    n_base = sum(p.numel() for p in base.parameters())
    mem_label = "peak MiB" if device.type == "cuda" else "step MiB"
    header = (
        f"{'variant':<25} {'params added':>14} {'forward ms':>11} {'x':>6} {'fwd+bwd ms':>11} {'x':>6} "
        f"{'generate ms':>12} {'x':>6} {mem_label:>9} {'x':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        b = base_of[r["attn"]]
        added = (
            f"{r['params_added'] / 1e6:.2f}M ({100 * r['params_added'] / n_base:.1f}%)" if r["params_added"] else "-"
        )
        print(
            f"{r['variant']:<25} {added:>14} {1e3 * r['forward_s']:>11.1f} {r['forward_s'] / b['forward_s']:>5.2f}x "
            f"{1e3 * r['train_step_s']:>11.1f} {r['train_step_s'] / b['train_step_s']:>5.2f}x "
            f"{1e3 * r['generate_s']:>12.1f} {r['generate_s'] / b['generate_s']:>5.2f}x "
            f"{r['memory_bytes'] / 2**20:>9.1f} {r['memory_bytes'] / b['memory_bytes']:>5.2f}x"
        )
    print(
        f"generate = {args.new_tokens} new tokens per row with the KV cache; x = ratio to the base model with the same kernel"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": str(device), "dtype": args.dtype, "size": args.size, "rank": args.rank, "results": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
