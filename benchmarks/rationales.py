"""Rationale generation: mlan's batched teacher against one-row-at-a-time `generate`, on the same rows.

Both arms use the same loaded teacher, the same prompts (a spec's rows built as `mlan rationales` builds
them, MLAN's prompt and exemplar per row) and greedy decoding, so they do the same work: the benchmark
checks that they write the same tokens. mlan's arm is `mlan.rationales.run`'s own path: rows sorted by
prompt length into batches of `--batch-size`, left-padded. Printed: rows/s and generated tokens/s of each,
and the ratio. With `--engine vllm` on a CUDA GPU, vLLM's arm is timed against transformers' batches on the
same rows (the GPU is named); it needs vLLM installed (`pip install mlan[vllm]`) and refuses otherwise.

    python benchmarks/rationales.py                         # a tiny LLM built from config, 24 rows
    python benchmarks/rationales.py --model runs/teachers/smollm2-135m-instruct --rows 4 --max-new-tokens 96
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
    args = ap.parse_args()

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mlan.rationales import prompts
    from mlan.rationales.run import _batches, build_prompts, draw_rows, select
    from mlan.rationales.teacher import Sampling, TransformersTeacher

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
        texts = [r.prompt for r in rows]
        lengths = teacher.prompt_tokens(texts)
        sampling = Sampling(0.0, 1.0, args.max_new_tokens)
        device = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
        )
        print(f"teacher {model} on {device}; {len(rows)} rows, prompts {min(lengths)}-{max(lengths)} tokens, "
              f"greedy, max_new_tokens {args.max_new_tokens}")  # fmt: skip
        teacher.generate(texts[:1], None, sampling, 0)  # warm-up

        t = time.perf_counter()
        single = [teacher.generate([p], None, sampling, 0)[0] for p in texts]
        t_single = time.perf_counter() - t
        batched = [None] * len(rows)
        t = time.perf_counter()
        for batch in _batches(rows, lengths, args.batch_size):
            for i, g in zip(batch, teacher.generate([texts[i] for i in batch], None, sampling, 0), strict=True):
                batched[i] = g
        t_batched = time.perf_counter() - t

        def line(name: str, gens, seconds: float) -> float:
            tokens = sum(g.new_tokens for g in gens)
            print(
                f"  {name:<28} {seconds:7.1f} s  {len(gens) / seconds:7.2f} rows/s  {tokens / seconds:8.1f} tokens/s  ({tokens} tokens)"
            )
            return tokens / seconds

        a = line("one row at a time", single, t_single)
        b = line(f"mlan, batches of {args.batch_size}", batched, t_batched)
        same = sum(x.text == y.text for x, y in zip(single, batched, strict=True))
        print(f"  mlan vs one at a time: {b / a:.2f}x tokens/s, {t_single / t_batched:.2f}x rows/s; "
              f"identical outputs {same}/{len(rows)} (left padding changes float sums a little)")  # fmt: skip
        if args.engine == "vllm":
            from mlan.rationales.teacher import VllmTeacher

            del teacher
            vllm = VllmTeacher(model, vision=False, dtype="auto", tensor_parallel_size=1)
            vllm.generate(texts[:1], None, sampling, 0)
            t = time.perf_counter()
            gens = vllm.generate(texts, None, sampling, 0)
            c = line("vLLM", gens, time.perf_counter() - t)
            same = sum(x.text == y.text for x, y in zip(gens, batched, strict=True))
            print(f"  vLLM vs mlan's transformers batches: {c / b:.2f}x tokens/s; identical outputs {same}/{len(rows)}")


if __name__ == "__main__":
    main()
