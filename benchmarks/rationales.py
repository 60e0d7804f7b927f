"""Rationale generation: one row at a time against mlan's engines, on the same rows.

Every arm uses the same loaded teacher, the same prompts (a spec's rows built as `mlan rationales` builds
them, MLAN's prompt and exemplar per row) and greedy decoding, so they do the same work: the benchmark checks
that they write the same tokens. Arms:
- one row at a time: transformers' `generate` on each prompt alone;
- padded batches: `generate` on batches of `--batch-size` sorted by prompt length, left-padded (mlan's text
  path before continuous batching; still its path for image rows);
- continuous: mlan.generation as `mlan rationales` runs text rows: a row leaves the batch when it ends and
  the next takes its place, the prompt start rows shown the same exemplar share computed once;
- continuous + stops: the same, ending a row where it starts another example (as `mlan rationales` does:
  its rationale ends there anyway), so it writes fewer tokens: not in the equality check;
- server (`--serve`): `rationales.engine: openai` against a `transformers serve` of the same folder started
  here (CPU, its continuous batching off: transformers' paged path is slower on a CPU), `--concurrency`
  requests in flight.
Printed: rows/s and generated tokens/s of each and the ratios to one row at a time. With `--engine vllm` on a
CUDA GPU, vLLM's arm is timed on the same rows (the GPU is named); it needs vLLM (`pip install mlan[vllm]`).

    python benchmarks/rationales.py                         # a tiny LLM built from config, 24 rows
    python benchmarks/rationales.py --model runs/teachers/smollm2-135m-instruct --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _spec(rows_per_source: int, exemplar_dir: Path):
    """The bundled language sources, each with one written exemplar (the authors' carry no licence)."""
    import json

    from mlan.config.mixture import MixtureSpec

    sources = [
        ("squad", "squad/validation.jsonl", "squad"),
        ("strategyqa", "strategyqa/train.jsonl", "strategyqa"),
        ("commonsense_qa", "commonsense_qa/train.jsonl", "commonsense_qa"),
        ("cosmos_qa", "cosmos_qa/validation.jsonl", "cosmos_qa"),
        ("arc_easy", "arc_easy/train.jsonl", "arc"),
        ("arc_challenge", "arc_challenge/train.jsonl", "arc"),
    ]
    ex = {
        "question": "Which gas do plants take in to make food?",
        "answer": "carbon dioxide",
        "rationale": "Plants make sugar by photosynthesis, which uses carbon dioxide from the air, water and "
        "light; so the gas they take in to make food is carbon dioxide.",
        "context": "Plants use light, water and carbon dioxide to make sugar.",
    }
    files = {}
    for name, _, _ in sources:
        f = exemplar_dir / f"{name}.json"
        f.write_text(json.dumps([ex]))
        files[name] = str(f)
    return MixtureSpec.model_validate(
        {
            "name": "bench",
            "validation": 0,
            "sources": [
                {"name": n, "dataset": f"bundled:{p}", "adapter": a, "count": rows_per_source} for n, p, a in sources
            ],
            "rationales": {"exemplars": files, "temperature": 0},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a causal LM folder (default: a tiny LLM built from config)")
    ap.add_argument("--rows", type=int, default=4, help="rows per source (6 language sources)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="transformers", help="vllm: add vLLM's arm")
    ap.add_argument("--serve", action="store_true", help="add the server arm (the `serving` extra)")
    ap.add_argument("--concurrency", type=int, default=8, help="server arm: requests in flight")
    args = ap.parse_args()

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mlan.rationales import prompts
    from mlan.rationales.run import build_prompts, draw_rows, select, stop_texts
    from mlan.rationales.teacher import Ask, BatchTeacher, Sampling, TransformersTeacher

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from mlan.models import save_language_model
            from mlan.tiny import save_tiny_llava

            model = str(save_language_model(save_tiny_llava(tmp / "llava", size="small"), tmp / "lm"))
        spec = _spec(args.rows, tmp)
        rows = select(draw_rows(spec, tmp), limit=None, shard=(0, 1))
        exemplars = {
            s.name: prompts.load_exemplars(s.name, s.adapter, spec.rationales.exemplars[s.name]) for s in spec.sources
        }
        teacher = TransformersTeacher(model, vision=False, device=None, dtype="auto")
        build_prompts(spec, rows, exemplars, teacher.eos_token)
        lengths = teacher.prompt_tokens([r.prompt for r in rows])
        order = sorted(range(len(rows)), key=lambda i: (-lengths[i], rows[i].id))  # as mlan.rationales.run asks
        rows = [rows[i] for i in order]
        lengths = [lengths[i] for i in order]
        sampling = Sampling(0.0, 1.0, args.max_new_tokens)
        stops = stop_texts(spec, False, teacher.eos_token)
        asks = [Ask(r.prompt, None, sampling, 0, (), r.shared) for r in rows]
        stopping = [Ask(r.prompt, None, sampling, 0, stops, r.shared) for r in rows]
        device = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
        )
        shared = sum(len(teacher.tokenizer(r.shared)["input_ids"]) for r in rows) / sum(lengths)
        print(f"teacher {model} on {device}; {len(rows)} rows, prompts {min(lengths)}-{max(lengths)} tokens "
              f"({shared:.0%} of them an exemplar's shared start), greedy, max_new_tokens {args.max_new_tokens}")  # fmt: skip
        teacher.generate([rows[0].prompt], None, sampling, 0)  # warm-up

        def timed(stream) -> tuple[list, float]:
            out = [None] * len(rows)
            t = time.perf_counter()
            for i, g in stream:
                out[i] = g
            return out, time.perf_counter() - t

        single, t_single = timed((i, teacher.generate([r.prompt], None, sampling, 0)[0]) for i, r in enumerate(rows))
        arms = {
            f"padded batches of {args.batch_size}": timed(BatchTeacher.stream(teacher, asks, args.batch_size)),
            f"continuous, {args.batch_size} at once": timed(teacher.stream(asks, args.batch_size)),
            "continuous + stops": timed(teacher.stream(stopping, args.batch_size)),
        }
        if args.serve:
            arms[f"server, {args.concurrency} in flight"] = timed(_served(model, asks, args))

        def line(name: str, gens, seconds: float) -> None:
            tokens = sum(g.new_tokens for g in gens)
            print(
                f"  {name:<28} {seconds:7.1f} s  {len(gens) / seconds:7.2f} rows/s  {tokens / seconds:8.1f} tokens/s"
                f"  ({tokens} tokens)"
            )

        line("one row at a time", single, t_single)
        for name, (gens, seconds) in arms.items():
            line(name, gens, seconds)
        for name, (gens, seconds) in arms.items():
            same = sum(x.text == y.text for x, y in zip(single, gens, strict=True))
            check = "" if "stops" in name else f"; identical outputs {same}/{len(rows)}"
            print(f"  {name} vs one at a time: {t_single / seconds:.2f}x rows/s{check}")
        if args.engine == "vllm":
            from mlan.rationales.teacher import VllmTeacher

            del teacher
            vllm = VllmTeacher(model, vision=False, dtype="auto", tensor_parallel_size=1, gpu_memory_utilization=0.9)
            list(vllm.stream(asks[:1], 1))
            gens, seconds = timed(vllm.stream(asks, args.batch_size))
            line("vLLM", gens, seconds)
            same = sum(x.text == y.text for x, y in zip(gens, single, strict=True))
            print(f"  vLLM vs one at a time: {t_single / seconds:.2f}x rows/s; identical outputs {same}/{len(rows)}")


def _served(model: str, asks, args):
    """The asks through mlan's server engine, against `transformers serve` of `model` on a free local port."""
    import socket
    import subprocess

    from mlan.config.rationales import RationaleSettings
    from mlan.rationales.server import ServerTeacher, check_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        settings = RationaleSettings(
            engine="openai", teacher=model, base_url=f"http://127.0.0.1:{port}/v1", concurrency=args.concurrency
        )
        deadline = time.time() + 300
        while True:
            try:
                check_server(settings, [model])
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        teacher = ServerTeacher(model, vision=False, settings=settings)
        list(teacher.stream(asks[:1], 1))  # warm-up: the server loads the model on its first request
        yield from teacher.stream(asks, args.batch_size)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
