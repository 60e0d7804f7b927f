"""`run_evaluation`: several models x several suites, cached per task, compared side by side."""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlan.config.suite import EvalSuite, SuiteTask
from mlan.errors import MlanError
from mlan.evaluate import cache
from mlan.evaluate.report import EvalReport, ModelResults, TaskResult, compare, write_comparison, write_model_results

log = logging.getLogger(__name__)

DEFAULT_SUITE = "eight_task"
UNSEEN_SUITES = ("unseen_language", "unseen_vision")
DEFAULT_OUT = Path("runs") / "eval"

# progress(label, done, total): label names the model/suite/task being worked on.
Progress = Callable[[str, int, int], None]


def load_suite(name_or_path: str | Path, overrides: list[str] | None = None) -> EvalSuite:
    """A suite by shipped name (`eight_task`, `unseen_language`, `unseen_vision`, ...) or YAML path."""
    from mlan.config import load_config
    from mlan.paths import resolve_config, shipped_files

    p = Path(name_or_path)
    if not p.is_file():
        names = [f.stem for f in shipped_files("evaluations")]
        stem = p.stem if p.suffix == ".yaml" else p.name
        if len(p.parts) <= 2 and stem not in names:
            hint = difflib.get_close_matches(stem, names, n=1, cutoff=0.5)
            sug = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise MlanError(
                f"{name_or_path}: unknown suite{sug}; shipped suites: {', '.join(names)}, or give a YAML file"
            )
    return load_config(resolve_config(name_or_path, "evaluations"), EvalSuite, overrides or ())


def select_tasks(suites: list[EvalSuite], tasks: list[str] | None) -> list[tuple[EvalSuite, list[SuiteTask]]]:
    """The suites with only the named tasks (all when `tasks` is None); an unknown name is an error."""
    if not tasks:
        return [(s, list(s.tasks)) for s in suites]
    known = [t.name for s in suites for t in s.tasks]
    for name in tasks:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            sug = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise MlanError(
                f"--tasks {name}: unknown task{sug}; tasks in the chosen suites: {', '.join(dict.fromkeys(known))}"
            )
    out = [(s, [t for t in s.tasks if t.name in tasks]) for s in suites]
    return [(s, ts) for s, ts in out if ts]


def _label(model: Any, taken: set[str]) -> str:
    if hasattr(model, "generate") and not isinstance(model, (str, Path)):
        base = getattr(model, "name", type(model).__name__)
    else:
        p = Path(str(model)).expanduser()
        base = p.name if p.exists() else str(model).replace("/", "__")
    base = re.sub(r"[^\w.\-]+", "_", base) or "model"
    label, k = base, 2
    while label in taken:
        label, k = f"{base}-{k}", k + 1
    taken.add(label)
    return label


def _seen(task: SuiteTask, covered: set[str]) -> bool:
    names = {task.name, task.format or task.name, task.lm_eval_task or task.name}
    if task.name.startswith("race") or task.lm_eval_task == "race":
        names.add("race_high")
    return bool(names & covered)


def run_evaluation(
    models: list[str | Path | Any],
    suites: list[EvalSuite | str | Path],
    *,
    tasks: list[str] | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    data_files: dict[str, str] | None = None,
    image_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    reference: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "auto",
    fresh: bool = False,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate each model on each suite; write per-model results and, for several models, a comparison.

    Args:
        models: model folders or hub ids (a LLaVA folder or a plain causal LM); also any object
            with `generate(requests, max_new_tokens=, stop=)`, `multimodal` and `name` (a scripted
            model: generate suites only).
        suites: `EvalSuite`s, shipped suite names or YAML paths.
        tasks: only these task names (across the suites).
        limit: at most this many questions per task (the first ones, in file order).
        data_dir: local data, `<data_dir>/<task>/<split>.jsonl`, for every task (offline).
        data_files: per-task local files `{task: path}`, winning over `data_dir` and the suite.
        image_dir: folder where image file names in local rows are looked up.
        out_dir: where results go (default `runs/eval`): `<out_dir>/<label>/results.{json,md}`,
            per-task samples and cache, plus `comparison.{json,md,png}` for several models.
        reference: label or path of the model deltas are computed against (default: the first,
            when there are several models).
        batch_size: questions per forward pass.
        device, dtype: where and in which precision to run ("auto": the checkpoint's dtype).
        fresh: ignore cached task results (they are recomputed and overwritten).
        progress: called as progress(label, done, total) while tasks run.

    Each model's `results.json` lists per task: task, suite, metric, value, stderr, n, modality,
    seen (its mixture manifest's `covers_eval_tasks` includes the task), engine, source, metrics.
    """
    from mlan.evaluate.tasks import check_local_data
    from mlan.models import check_model_dir, is_llava_config, read_mixture_manifest, read_model_config

    if not models:
        raise MlanError("no model given")
    suite_objs = [s if isinstance(s, EvalSuite) else load_suite(s) for s in suites]
    plan = select_tasks(suite_objs, tasks)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    if image_dir is not None and not Path(image_dir).expanduser().is_dir():
        raise MlanError(f"{image_dir}: image folder not found")

    # Check every input before any weights are loaded.
    taken: set[str] = set()
    entries = []
    for m in models:
        scripted = hasattr(m, "generate") and not isinstance(m, (str, Path))
        if scripted:
            multimodal, manifest = bool(getattr(m, "multimodal", False)), getattr(m, "manifest", {}) or {}
        else:
            p = Path(str(m)).expanduser()
            if not p.exists() and ("/" not in str(m) or str(m).startswith((".", "/", "~"))):
                raise MlanError(f"{m}: model folder not found")
            check_model_dir(m)
            if not p.exists():
                from mlan.hub import require_hub

                require_hub(str(m), "model", "pass a local model folder", model=True)
            multimodal = is_llava_config(read_model_config(m))
            manifest = read_mixture_manifest(m) if p.is_dir() else {}
        label = _label(m, taken)
        for suite, _ in plan:
            if suite.engine == "lm_eval" and scripted:
                raise MlanError(f"{label}: a scripted model can only run generate suites, not {suite.name!r}")
        entries.append((m, label, scripted, manifest, multimodal))
    # A text-only LLM has no vision score: in a comparison its vision cells stay empty, alone it is an error.
    vision = [s.name for s, _ in plan if s.modality == "vision"]
    text_only = [e for e in entries if not e[4]]
    if vision and text_only and len(text_only) == len(entries):
        raise MlanError(
            f"{text_only[0][0]}: suite {vision[0]!r} has vision tasks but this is a text-only model (give a LLaVA-style folder, or drop the suite)"
        )
    for e in text_only if vision else []:
        log.warning("%s is text-only: vision suite(s) %s skipped for it", e[1], ", ".join(vision))
    for suite, ts in plan:
        check_local_data(suite, ts, data_dir, data_files)
    ref_label = None
    if reference is not None:
        labels = [e[1] for e in entries]
        by_path = {str(e[0]): e[1] for e in entries} | {
            str(Path(str(e[0])).expanduser().resolve()): e[1] for e in entries
        }
        ref_label = (
            reference if reference in labels else by_path.get(str(reference)) or by_path.get(str(Path(reference)))
        )
        if ref_label is None:
            raise MlanError(f"--reference {reference}: not one of the evaluated models ({', '.join(labels)})")
    elif len(entries) > 1:
        ref_label = entries[0][1]

    results: list[ModelResults] = []
    for m, label, scripted, manifest, multimodal in entries:
        covered = set(manifest.get("covers_eval_tasks") or [])
        model_plan = [(s, ts) for s, ts in plan if multimodal or s.modality != "vision"]
        mr = _evaluate_model(
            m, label, scripted, covered, model_plan,
            limit=limit, data_dir=data_dir, data_files=data_files, image_dir=image_dir,
            out=out_dir / label, batch_size=batch_size, device=device, dtype=dtype, fresh=fresh, progress=progress,
        )  # fmt: skip
        mr.seen_tasks = sorted(covered)
        write_model_results(mr, out_dir / label)
        results.append(mr)
    report = EvalReport(models=results, out_dir=out_dir, reference=ref_label)
    if len(results) > 1:
        report.comparison = compare(results, ref_label)
        write_comparison(report)
    return report


def _task_key(model, scripted: bool, suite: EvalSuite, task: SuiteTask, limit, data_dir, data_files, dtype) -> str:
    from mlan.evaluate.tasks import data_fingerprint

    ident = {"scripted": getattr(model, "name", type(model).__name__)} if scripted else cache.model_identity(model)
    protocol = suite.model_dump(mode="json", exclude={"tasks", "description", "name"})
    return cache.cache_key(
        {
            "model": ident,
            "engine": suite.engine,
            "protocol": protocol if suite.engine == "generate" else None,
            "task": task.model_dump(mode="json"),
            "data": data_fingerprint(task, data_dir, data_files),
            "limit": limit,
            "dtype": dtype,
        }
    )


def _evaluate_model(
    model,
    label,
    scripted,
    covered,
    plan,
    *,
    limit,
    data_dir,
    data_files,
    image_dir,
    out,
    batch_size,
    device,
    dtype,
    fresh,
    progress,
) -> ModelResults:
    cache_dir = out / "cache"
    todo: list[tuple[EvalSuite, SuiteTask, str]] = []
    done: dict[tuple[str, str], TaskResult] = {}
    for suite, ts in plan:
        for t in ts:
            key = _task_key(model, scripted, suite, t, limit, data_dir, data_files, dtype)
            hit = None if fresh else cache.load_cached(cache_dir, suite.name, t.name, key)
            if hit is not None:
                log.info("%s: %s/%s from cache", label, suite.name, t.name)
                done[(suite.name, t.name)] = TaskResult(**hit)
            else:
                todo.append((suite, t, key))
    total = sum(len(ts) for _, ts in plan)
    n_done = len(done)
    if progress:
        progress(f"{label}: {n_done} cached", n_done, total)

    loaded = None
    lm = None
    generator = None
    for suite, t, key in todo:
        if not scripted and loaded is None:
            from mlan.models import load_model

            loaded = load_model(model, device=device, dtype=dtype)
        label_task = f"{label}: {suite.name}/{t.name}"
        if progress:
            progress(label_task, n_done, total)
        t0 = time.perf_counter()
        seen = _seen(t, covered)
        if suite.engine == "lm_eval":
            from mlan.evaluate.harness import make_lm, pick_metric, run_lm_eval_tasks

            if lm is None:
                lm = make_lm(loaded, batch_size=batch_size)
            raw = run_lm_eval_tasks(lm, [t], data_dir=data_dir, overrides=data_files, limit=limit)[t.name]
            value, stderr = pick_metric(raw["metrics"], t.metric)
            res = TaskResult(
                task=t.name, suite=suite.name, metric=t.metric, value=float(value), stderr=stderr, n=int(raw["n"] or 0),
                modality=suite.modality, seen=seen, engine="lm_eval", source=raw["source"], metrics=raw["metrics"],
            )  # fmt: skip
        else:
            from mlan.evaluate.generate import HFGenerator, run_generate_task
            from mlan.evaluate.tasks import load_task_data, to_items

            if scripted:
                generator = model
            elif generator is None:
                generator = HFGenerator(loaded, batch_size=batch_size)
            data = load_task_data(t, data_dir, data_files)
            items = to_items(t, data, limit=limit, image_dir=image_dir)
            if not items:
                raise MlanError(f"{data.source}: no questions for task {t.name!r} (check with_images/without_images)")

            def on_batch(k, _lt=label_task, _n=n_done, _items=items):
                if progress:
                    progress(f"{_lt} ({k}/{len(_items)})", _n, total)

            metrics, samples = run_generate_task(t, suite, items, generator, on_batch=on_batch)
            if t.metric not in metrics:
                raise MlanError(
                    f"suite {suite.name}: task {t.name}: metric {t.metric!r} not computed (has: {', '.join(metrics)})"
                )
            _write_samples(out / "samples" / f"{suite.name}__{t.name}.jsonl", samples)
            res = TaskResult(
                task=t.name, suite=suite.name, metric=t.metric, value=float(metrics[t.metric]),
                stderr=metrics.get(f"{t.metric}_stderr"), n=len(items), modality=suite.modality, seen=seen,
                engine="generate", source=data.source, metrics=metrics,
            )  # fmt: skip
        res.seconds = round(time.perf_counter() - t0, 2)
        cache.store(cache_dir, suite.name, t.name, key, asdict(res))
        done[(suite.name, t.name)] = res
        n_done += 1
        log.info("%s: %s %.1f (n=%d, %.1fs)", label_task, t.metric, 100 * res.value, res.n, res.seconds)
        if progress:
            progress(label_task, n_done, total)
    ordered = [done[(s.name, t.name)] for s, ts in plan for t in ts]
    for r in ordered:  # the manifest decides, also for results that came from the cache
        r.seen = any(_seen(t, covered) for s, ts in plan for t in ts if s.name == r.suite and t.name == r.task)
    return ModelResults(label=label, model=str(getattr(model, "name", model)), results=ordered)


def _write_samples(path: Path, samples: list[dict]) -> None:
    import json

    from mlan.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples))
