"""Evaluation throughput, measured against baselines in the same run.

1. Language: mlan against lm-eval on the same model folder, task definition, data and limit, timed
   the same way for both, two ways: (a) end to end, each CLI as a fresh process (`python -m mlan
   eval ...` against `python -m lm_eval run --model hf ...`: interpreter start, imports, task set-up,
   model load, scoring); (b) in process, each as a library call in this process after both libraries
   are imported (`mlan.evaluate.run_evaluation`, which hands lm-eval a loaded model and skips
   lm-eval's built-in task index, against `lm_eval.simple_evaluate(model="hf", ...)` with a
   `TaskManager(include_path=...)`, lm-eval's default, which indexes its built-in tasks; the index
   time is printed beside it). Wall time of each, the two ratios, and whether all four scores are equal.
2. Vision: our generate-then-match harness on POPE-style questions over real images, batched
   against one question at a time: questions per second, the speed-up, and whether the answers
   are identical.

3. Processes: `mlan eval` on the unseen-language suite's BoolQ and OpenBookQA (bundled rows) and the
   eight-task suite's ARC-Easy and OpenBookQA, as a command in one process (all the machine's threads) against the same
   command under `accelerate launch` with two CPU processes (half the threads each): wall time,
   questions per second, the ratio, and whether the scores and per-question records are identical.
4. Engines (`--vllm-model PATH`, on a CUDA machine with the `vllm` extra): transformers' `generate`
   against vLLM on the unseen-language suite's BoolQ and OpenBookQA with a real model (~1B): questions
   per second, the ratio, and the share of identical answers, with the GPU named. Skipped with a note
   elsewhere.
5. Suite (`--only suite`): the eight-task suite on a real small pretrained model (`--suite-model`, default
   SmolLM2-135M-Instruct as scripts/gguf_teacher.py writes it), `--limit` questions per task (`--gsm8k` for
   GSM8K's generation): per task, `python -m mlan eval` (mlan's backend) against `python -m lm_eval run
   --model hf` on mlan's task YAML (--include_path), each a command; wall time per task and in all, every
   metric compared, and the tokens run through the model per question by HFLM and by mlan's backend (from
   results.json). RACE and HellaSwag have no redistributable rows: stand-ins in their schemas are made of the
   bundled CosmosQA passages (tests/evaldata.py, `write_standin_rows`).

Offline: a "small" tiny LLaVA (and its extracted language model) built locally, bundled data.

    python benchmarks/eval_throughput.py [--limit 100] [--vision 48] [--batch-size 16] [--size small]
    python benchmarks/eval_throughput.py --only processes,engines --vllm-model /models/Llama-3.2-1B-Instruct
    python benchmarks/eval_throughput.py --only suite --limit 100 --gsm8k 50
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


def language(base: Path, work: Path, limit: int, batch_size: int, task_name: str, repeats: int) -> None:
    """mlan vs lm-eval on one language task, timed the same way twice: (a) each as a command (a fresh
    process: interpreter start, imports, task set-up, model load, scoring), (b) each as a library call
    in this process (imports done before either clock starts; each loads the model from the folder).
    Each pair is measured `repeats` times, the order alternating within the pair; medians are compared."""
    import statistics

    import lm_eval
    import lm_eval.models.huggingface
    import yaml
    from lm_eval.tasks import TaskManager
    from transformers import LlamaForCausalLM  # noqa: F401 (the model class both load)

    from mlan.evaluate import EvalRun, load_suite, run_evaluation
    from mlan.evaluate.harness import task_yaml
    from mlan.paths import BUNDLED_DATA_DIR

    suite = load_suite("eight_task")
    task = suite.task(task_name)
    # The same task definition for lm-eval: the YAML mlan's bridge generates (standard definition
    # included by path, local data), found through --include_path / TaskManager(include_path=...).
    inc = work / "lm_eval_tasks"
    inc.mkdir()
    cfg, _ = task_yaml(task, BUNDLED_DATA_DIR, None, inc)
    (inc / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    key = cfg["task"]
    metric = ""  # named by mlan's first result
    scores: dict[str, list[float]] = {}
    index_s: list[float] = []
    n_questions: list[int] = []

    def lm_eval_score(results: dict) -> float:
        return results[key][metric if "," in metric else f"{metric},none"]

    def mlan_lib(i: int) -> float:
        nonlocal metric
        run = EvalRun(
            models=[str(base)], tasks=[task_name], limit=limit, data_dir=str(BUNDLED_DATA_DIR),
            out=str(work / f"mlan_lib{i}"), batch_size=batch_size, device="cpu", fresh=True,
        )  # fmt: skip
        ours = run_evaluation(run, suites=[suite]).models[0].results[0]
        metric = ours.metric
        n_questions.append(ours.n)
        return ours.value

    def lm_eval_lib(i: int) -> float:
        # lm-eval as a library user calls it on the same folder: TaskManager with the include path
        # (lm-eval's default, which also indexes its built-in tasks), then simple_evaluate.
        t0 = time.perf_counter()
        tm = TaskManager(include_path=str(inc))
        index_s.append(time.perf_counter() - t0)
        res = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={base},dtype=float32", tasks=[key], task_manager=tm,
            limit=limit, batch_size=batch_size, device="cpu", log_samples=False,
        )  # fmt: skip
        return lm_eval_score(res["results"])

    def command(label: str, cmd: list[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-3000:])
            raise SystemExit(f"{label}: {' '.join(cmd[:4])} ... failed")

    def mlan_cli(i: int) -> float:
        out = work / f"mlan_cli{i}"
        command("mlan eval CLI", [
            sys.executable, "-m", "mlan", "eval", str(base), "--tasks", task_name, "--limit", str(limit),
            "--data-dir", str(BUNDLED_DATA_DIR), "--out", str(out), "--batch-size", str(batch_size),
            "--device", "cpu", "--fresh",
        ])  # fmt: skip
        row = next(
            r for r in json.loads(next(out.rglob("results.json")).read_text())["results"] if r["task"] == task_name
        )
        if row["metric"] != metric:
            raise SystemExit(f"mlan eval CLI scored {row['metric']}, the library {metric}")
        n_questions.append(row["n"])
        return row["value"]

    def lm_eval_cli(i: int) -> float:
        out = work / f"lm_eval_cli{i}"
        command("lm_eval CLI", [
            sys.executable, "-m", "lm_eval", "run", "--model", "hf",
            "--model_args", f"pretrained={base},dtype=float32", "--tasks", key, "--include_path", str(inc),
            "--limit", str(limit), "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out),
        ])  # fmt: skip
        res_file = max(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
        return lm_eval_score(json.loads(res_file.read_text())["results"])

    timings: dict[str, list[float]] = {}
    # mlan's library call first, once: its result names the metric the others are read with. It is
    # also the warm-up (first loads, the datasets cache of the local data) and is not counted.
    mlan_lib(-1)
    pairs = (("in process", mlan_lib, lm_eval_lib), ("end to end", mlan_cli, lm_eval_cli))
    for i in range(repeats):
        for _, ours, theirs in pairs:
            for fn in (ours, theirs) if i % 2 == 0 else (theirs, ours):
                t0 = time.perf_counter()
                value = fn(i)
                timings.setdefault(fn.__name__, []).append(time.perf_counter() - t0)
                scores.setdefault(fn.__name__, []).append(value)

    values = [v for vs in scores.values() for v in vs]
    equal = max(values) - min(values) < 1e-9 and len(set(n_questions)) == 1
    med = {k: statistics.median(v) for k, v in timings.items()}

    def line(label: str, name: str, extra: str = "") -> str:
        t = timings[name]
        return (f"    {label:<27} {med[name]:7.1f} s [{min(t):.1f}-{max(t):.1f}]   "
                f"{metric} = {scores[name][0]:.4f}{extra}")  # fmt: skip

    print(f"language: {task_name}, {n_questions[0]} questions, model {base.name} (batch {batch_size}, CPU); "
          f"median [range] of {repeats} runs each, order alternating, after one untimed mlan warm-up")  # fmt: skip
    print("  end to end (each CLI a fresh process: start-up, imports, task set-up, model load, scoring):")
    print(line("mlan eval CLI", "mlan_cli"))
    print(line("lm_eval CLI", "lm_eval_cli"))
    print(f"    time ratio lm_eval/mlan     {med['lm_eval_cli'] / med['mlan_cli']:7.2f}x")
    print("  in process (library calls in this process, imports done before; model loaded from the folder):")
    print(line("mlan run_evaluation", "mlan_lib"))
    print(
        line(
            "lm_eval.simple_evaluate", "lm_eval_lib", f"   (TaskManager index {statistics.median(index_s):.1f} s of it)"
        )
    )
    print(f"    time ratio lm_eval/mlan     {med['lm_eval_lib'] / med['mlan_lib']:7.2f}x")
    print(f"  scores equal (every run of all four): {equal}")
    if not equal:
        raise SystemExit(f"scores differ: {scores}, questions {n_questions}")


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


UNSEEN = ["--suite", "unseen_language", "--tasks", "boolq,openbookqa"]


def _unseen_data() -> list[str]:
    """The unseen-language BoolQ and OpenBookQA tasks on mlan's bundled rows (hub schemas)."""
    from mlan.paths import BUNDLED_DATA_DIR

    return ["--data", f"boolq={BUNDLED_DATA_DIR / 'boolq' / 'validation.jsonl'}",
            "--data", f"openbookqa={BUNDLED_DATA_DIR / 'openbookqa' / 'test.jsonl'}"]  # fmt: skip


def _records(out: Path) -> tuple[list, dict]:
    """(every task's scores but its wall time, every per-question record file's bytes) of one results folder."""
    [model] = [d for d in out.iterdir() if d.is_dir()]
    data = json.loads((model / "results.json").read_text())
    scores = [{k: v for k, v in r.items() if k != "seconds"} for r in data["results"]]
    return scores, {f.name: f.read_bytes() for f in sorted((model / "samples").iterdir())}


def processes(llava: Path, work: Path, limit: int, batch_size: int) -> None:
    """One process against two (accelerate launch, gloo) on the same `mlan eval` command."""
    import socket

    cores = os.cpu_count() or 2
    args = ["eval", str(llava), *UNSEEN, "--suite", "eight_task", "--tasks", "arc_easy", *_unseen_data()]
    args += ["--data", f"arc_easy={_bundled('arc_easy')}", "--limit", str(limit), "--batch-size", str(batch_size)]
    runs = {}
    for n in (1, 2):
        out = work / f"procs{n}"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n)), "CUDA_VISIBLE_DEVICES": ""}
        if n == 1:
            cmd = [sys.executable, "-m", "mlan", "-q", *args, "--out", str(out)]
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            accelerate = str(Path(sys.executable).parent / "accelerate")
            config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu_ddp.yaml"
            cmd = [accelerate, "launch", "--config_file", str(config), "--num_processes", "2",
                   "--main_process_port", str(port), "-m", "mlan", "-q", *args, "--out", str(out)]  # fmt: skip
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"{n} process(es) failed:\n{(p.stdout + p.stderr)[-3000:]}")
        runs[n] = (wall, *_records(out))
    questions = sum(r["n"] for r in runs[1][1])
    tasks = ", ".join(f"{r['suite']}/{r['task']}" for r in runs[1][1])
    print(f"processes: `mlan eval` on {tasks}: {questions} questions, batch {batch_size}, CPU, {cores} cores "
          "(end to end: start-up and model load included)")  # fmt: skip
    for n in (1, 2):
        print(f"  {n} process(es), {max(1, cores // n)} thread(s) each  {runs[n][0]:7.1f} s   "
              f"{questions / runs[n][0]:6.1f} questions/s")  # fmt: skip
    same = runs[1][1] == runs[2][1] and runs[1][2] == runs[2][2]
    print(f"  two / one: {runs[1][0] / runs[2][0]:.2f}x questions per second; identical scores and records: {same}")
    if not same:
        raise SystemExit("two processes did not give the one-process results")


def engines(model: str | None, limit: int, batch_size: int, work: Path) -> None:
    """transformers' generate against vLLM on the unseen-language tasks with a real model, on a GPU."""
    import importlib.util

    import torch

    if model is None or not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        why = "no --vllm-model" if model is None else "no CUDA GPU" if not torch.cuda.is_available() else "no vllm"
        print(f"engines: skipped ({why}); run on a CUDA machine with `pip install 'mlan[vllm]'` and --vllm-model PATH")
        return
    runs = {}
    for engine in ("transformers", "vllm"):
        out = work / f"engine-{engine}"
        cmd = [sys.executable, "-m", "mlan", "-q", "eval", model, *UNSEEN, *_unseen_data(), "--limit", str(limit)]
        cmd += ["--batch-size", str(batch_size), "--engine", engine, "--out", str(out)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"engine {engine} failed:\n{(p.stdout + p.stderr)[-3000:]}")
        runs[engine] = (wall, *_records(out))
    questions = sum(r["n"] for r in runs["transformers"][1])
    answers = {
        e: [json.loads(x)["response"] for b in runs[e][2].values() for x in b.decode().splitlines()] for e in runs
    }
    same = sum(a == b for a, b in zip(answers["transformers"], answers["vllm"], strict=True)) / len(answers["vllm"])
    print(f"engines: unseen-language BoolQ + OpenBookQA, {questions} questions, {Path(model).name}, "
          f"{torch.cuda.get_device_name(0)} (end to end: start-up and model load included)")  # fmt: skip
    for e, (wall, _, _) in runs.items():
        print(f"  {e:<13} {wall:7.1f} s   {questions / wall:6.1f} questions/s")
    print(f"  vllm / transformers: {runs['transformers'][0] / runs['vllm'][0]:.2f}x; identical answers {same:.1%}")


SUITE = ["gsm8k", "commonsense_qa", "arc_easy", "arc_challenge", "race_high", "hellaswag", "mmlu", "openbookqa"]


def _suite_data(work: Path, gsm8k: int) -> Path:
    """The eight tasks' local rows: the bundled slices (GSM8K's test split cut to `gsm8k` rows), RACE and
    HellaSwag stand-ins made of the bundled CosmosQA rows."""
    import shutil

    from mlan.paths import BUNDLED_DATA_DIR

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from evaldata import write_standin_rows  # the tests' stand-in rows, so both measure the same shapes

    d = work / "suite_data"
    for task, split in [("commonsense_qa", "validation"), ("arc_easy", "test"), ("arc_challenge", "test"),
                        ("mmlu", "test"), ("openbookqa", "test"), ("gsm8k", "train")]:  # fmt: skip
        (d / task).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUNDLED_DATA_DIR / task / f"{split}.jsonl", d / task / f"{split}.jsonl")
    rows = (BUNDLED_DATA_DIR / "gsm8k" / "test.jsonl").read_text().splitlines()[:gsm8k]
    (d / "gsm8k" / "test.jsonl").write_text("".join(r + "\n" for r in rows))
    return write_standin_rows(d, 200)


def suite(model: Path, work: Path, limit: int, gsm8k: int, batch_size: int) -> None:
    """mlan's backend against the lm_eval CLI on the eight-task suite with a real model (module doc, part 5)."""
    import yaml

    from mlan.evaluate import load_suite
    from mlan.evaluate.harness import pick_metric, task_yaml

    if not (model / "config.json").is_file():
        raise SystemExit(
            f"{model}: no model; build it with `MLAN_EXTRAS=gguf ./scripts/setup.sh && "
            f".venv/bin/python scripts/gguf_teacher.py {model}` or pass --suite-model"
        )
    data = _suite_data(work, gsm8k)
    eight = load_suite("eight_task")
    inc = work / "suite_tasks"
    inc.mkdir()
    for name in SUITE:
        cfg, _ = task_yaml(eight.task(name), data, None, inc)
        (inc / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    def command(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if p.returncode:
            raise SystemExit(f"{' '.join(cmd[:5])} ... failed:\n{(p.stdout + p.stderr)[-3000:]}")
        return time.perf_counter() - t0

    print(f"suite: the eight tasks, model {model.name}, batch {batch_size}, CPU, {os.cpu_count()} cores; each task "
          "one command per tool (start-up, imports, task set-up, model load, scoring), lm_eval's first")  # fmt: skip
    print(f"    {'task':<15} {'n':>4} {'lm_eval s':>9} {'mlan s':>7} {'ratio':>6}   "
          f"{'tokens/question lm_eval -> mlan':>31}   {'headline metric':<30} equal")  # fmt: skip
    totals, all_equal = [0.0, 0.0], True
    for name in SUITE:
        out_theirs, out_ours = work / f"suite_lm_eval_{name}", work / f"suite_mlan_{name}"
        theirs_s = command([
            sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
            "--tasks", f"mlan_{name}", "--include_path", str(inc), "--limit", str(limit),
            "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out_theirs),
        ])  # fmt: skip
        ours_s = command([
            sys.executable, "-m", "mlan", "-q", "eval", str(model), "--tasks", name, "--limit", str(limit),
            "--data-dir", str(data), "--out", str(out_ours), "--batch-size", str(batch_size), "--device", "cpu",
            "--fresh",
        ])  # fmt: skip
        theirs = json.loads(next(out_theirs.rglob("results_*.json")).read_text())["results"][f"mlan_{name}"]
        theirs = {k: v for k, v in theirs.items() if isinstance(v, (int, float)) and k != "alias"}
        [ours] = json.loads(next(out_ours.rglob("results.json")).read_text())["results"]
        assert ours["backend"] == "mlan", ours
        equal = set(theirs) == set(ours["metrics"]) and all(abs(theirs[k] - ours["metrics"][k]) < 1e-12 for k in theirs)
        all_equal &= equal
        totals[0] += theirs_s
        totals[1] += ours_s
        tok = ours["tokens"]
        before, after = tok["lm_eval"] / tok["questions"], tok["computed"] / tok["questions"]
        headline = f"{ours['metric']} = {pick_metric(ours['metrics'], ours['metric'])[0]:.4f}"
        print(f"    {name:<15} {ours['n']:>4} {theirs_s:9.1f} {ours_s:7.1f} {ours_s / theirs_s:5.2f}x   "
              f"{before:13.0f} -> {after:5.0f} ({after / before:4.2f}x)   {headline:<30} {equal}", flush=True)  # fmt: skip
    print(f"    {'total':<15} {'':>4} {totals[0]:9.1f} {totals[1]:7.1f} {totals[1] / totals[0]:5.2f}x")
    print(f"  every metric of every task equal: {all_equal}")
    if not all_equal:
        raise SystemExit("mlan's backend and the lm_eval CLI scored differently")


def _bundled(task: str) -> Path:
    from mlan.paths import BUNDLED_DATA_DIR

    return BUNDLED_DATA_DIR / task / "test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100, help="language questions")
    ap.add_argument("--vision", type=int, default=48, help="vision questions")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", default="small", help="tiny model size (tiny, small, base)")
    ap.add_argument("--task", default="arc_easy", help="eight_task task for the language comparison")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each language contender (median)")
    ap.add_argument("--only", default="language,vision,processes,engines", help="which parts, comma-separated")
    ap.add_argument("--vllm-model", help="a real model folder for the engines part (CUDA and the vllm extra)")
    ap.add_argument("--suite-model", default="runs/teachers/smollm2-135m-instruct", help="real model of the suite part")
    ap.add_argument("--gsm8k", type=int, default=100, help="GSM8K questions in the suite part (generation is slow)")
    args = ap.parse_args()
    parts = set(args.only.split(","))

    import torch

    from mlan.models import save_language_model
    from mlan.tiny import save_tiny_llava

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="mlan-bench-eval-") as tmp:
        work = Path(tmp)
        llava = save_tiny_llava(work / f"llava-{args.size}", size=args.size, seed=0)
        base = save_language_model(llava, work / f"llm-{args.size}")
        if "language" in parts:
            language(base, work, args.limit, args.batch_size, args.task, args.repeats)
        if "vision" in parts:
            vision(llava, args.vision, args.batch_size)
        if "processes" in parts:
            processes(llava, work, args.limit, args.batch_size)
        if "engines" in parts:
            engines(args.vllm_model, args.limit, args.batch_size, work)
        if "suite" in parts:
            suite(Path(args.suite_model).resolve(), work, args.limit, args.gsm8k, args.batch_size)


if __name__ == "__main__":
    main()
