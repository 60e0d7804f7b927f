"""Evaluation throughput, measured against baselines in the same run.

1. Language: `mlan eval`'s library path (lm-eval in process, model object handed over, built-in
   task index skipped) against lm-eval's own CLI (`python -m lm_eval run --model hf ...`, a fresh
   process that indexes its tasks and loads the model by path) on the same model, task, data and
   limit: wall time of each, the ratio, and whether the scores are equal.
2. Vision: our generate-then-match harness on POPE-style questions over real images, batched
   against one question at a time: questions per second, the speed-up, and whether the answers
   are identical.

Offline: a "small" tiny LLaVA (and its extracted language model) built locally, bundled data.

    python benchmarks/eval_throughput.py [--limit 100] [--vision 48] [--batch-size 16] [--size small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OBJECTS = ["person", "dog", "car", "clock", "rocket", "tree", "boat", "coin"]


def language(base: Path, work: Path, limit: int, batch_size: int, task_name: str) -> None:
    import yaml

    from mlan.evaluate import EvalRun, load_suite, run_evaluation
    from mlan.evaluate.harness import task_yaml
    from mlan.paths import BUNDLED_DATA_DIR

    suite = load_suite("eight_task")
    task = suite.task(task_name)
    t0 = time.perf_counter()
    run = EvalRun(
        models=[str(base)], tasks=[task_name], limit=limit, data_dir=str(BUNDLED_DATA_DIR), out=str(work / "ours"),
        batch_size=batch_size, device="cpu", fresh=True,
    )  # fmt: skip
    report = run_evaluation(run, suites=[suite])
    ours_s = time.perf_counter() - t0
    ours = report.models[0].results[0]

    # The same task definition for lm-eval's CLI: the YAML our bridge generates (standard
    # definition included by path, local data), found through --include_path.
    inc = work / "lm_eval_tasks"
    inc.mkdir()
    cfg, _ = task_yaml(task, BUNDLED_DATA_DIR, None, inc)
    (inc / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={base},dtype=float32", "--tasks", cfg["task"], "--include_path", str(inc),
        "--limit", str(limit), "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(work / "lm_eval_out"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cli_s = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit("lm_eval CLI failed")
    res_file = max((work / "lm_eval_out").rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    theirs = json.loads(res_file.read_text())["results"][cfg["task"]]
    metric = ours.metric if "," in ours.metric else f"{ours.metric},none"
    print(f"language: {task_name}, {ours.n} questions, model {base.name} (batch {batch_size}, CPU)")
    print(f"  mlan eval (in process)  {ours_s:7.1f} s   {ours.metric} = {ours.value:.4f}")
    print(f"  lm_eval CLI             {cli_s:7.1f} s   {ours.metric} = {theirs[metric]:.4f}")
    print(f"  time ratio lm_eval/mlan {cli_s / ours_s:7.2f}x   scores equal: {abs(theirs[metric] - ours.value) < 1e-9}")


def vision(llava: Path, n: int, batch_size: int) -> None:
    from PIL import Image

    from mlan.evaluate import load_suite
    from mlan.evaluate.generate import HFGenerator, run_generate_task
    from mlan.evaluate.tasks import TaskData, to_items
    from mlan.models import load_model
    from mlan.paths import BUNDLED_DATA_DIR

    images = sorted((BUNDLED_DATA_DIR / "images").iterdir())
    rows = [
        {"question_id": i, "image": images[i % len(images)].name, "text": f"Is there a {OBJECTS[i % len(OBJECTS)]} in the image?", "label": "yes" if i % 3 else "no"}
        for i in range(n)
    ]  # fmt: skip
    suite = load_suite("unseen_vision")
    task = suite.task("pope")
    items = to_items(task, TaskData(rows=rows, source="bench", base_dir=BUNDLED_DATA_DIR / "images"))
    for it in items:  # decode once, outside the timings
        it.image = it.image.convert("RGB")
        Image.Image.load(it.image)
    loaded = load_model(llava, device="cpu")
    timings = {}
    answers = {}
    for bs in (1, batch_size):
        gen = HFGenerator(loaded, batch_size=bs)
        run_generate_task(task, suite, items[: min(4, n)], gen)  # warm-up
        t0 = time.perf_counter()
        _, samples = run_generate_task(task, suite, items, gen)
        timings[bs] = time.perf_counter() - t0
        answers[bs] = [s["response"] for s in samples]
    same = answers[1] == answers[batch_size]
    print(
        f"vision: POPE-style, {n} questions with images, model {llava.name}, max_new_tokens {task.max_new_tokens} (CPU)"
    )
    print(f"  one at a time           {timings[1]:7.2f} s   {n / timings[1]:6.1f} questions/s")
    print(
        f"  batched ({batch_size:>2})            {timings[batch_size]:7.2f} s   {n / timings[batch_size]:6.1f} questions/s"
    )
    print(f"  speed-up                {timings[1] / timings[batch_size]:7.2f}x   identical answers: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100, help="language questions")
    ap.add_argument("--vision", type=int, default=48, help="vision questions")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", default="small", help="tiny model size (tiny, small, base)")
    ap.add_argument("--task", default="arc_easy", help="eight_task task for the language comparison")
    args = ap.parse_args()

    import torch

    from mlan.models import save_language_model
    from mlan.tiny import save_tiny_llava

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="mlan-bench-eval-") as tmp:
        work = Path(tmp)
        llava = save_tiny_llava(work / f"llava-{args.size}", size=args.size, seed=0)
        base = save_language_model(llava, work / f"llm-{args.size}")
        language(base, work, args.limit, args.batch_size, args.task)
        vision(llava, args.vision, args.batch_size)


if __name__ == "__main__":
    main()
