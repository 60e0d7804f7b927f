"""`run_evaluation(EvalRun)`: several models x several suites, cached per task, compared side by side."""

from __future__ import annotations

import difflib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.config import load_config
from mlan.config.base import dump_config
from mlan.config.evaluation import DEFAULT_SUITE, UNSEEN_SUITES, EvalRun
from mlan.config.suite import EvalSuite, SuiteTask
from mlan.errors import MlanError
from mlan.evaluate import cache, parallel
from mlan.evaluate.prompts import own_prompt
from mlan.evaluate.report import (
    EvalReport,
    ModelResults,
    TaskResult,
    compare,
    named_averages,
    rate_label,
    write_comparison,
    write_model_results,
    write_samples,
)
from mlan.evaluate.tasks import check_local_data, load_task_data, to_items
from mlan.hub import require_hub
from mlan.io import atomic_write_text
from mlan.models import load_model, read_mixture_manifest
from mlan.paths import resolve_config, shipped_files
from mlan.runs import latest_run

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SUITE", "UNSEEN_SUITES", "EvalRun", "load_suite", "run_evaluation", "select_tasks"]

# progress(label, done, total): label names the model/suite/task being worked on.
Progress = Callable[[str, int, int], None]


def load_suite(name_or_path: str | Path, overrides: list[str] | None = None) -> EvalSuite:
    """A suite by shipped name (`eight_task`, `unseen_language`, `unseen_vision`, ...) or YAML path."""
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


@dataclass
class _Entry:
    """One model to evaluate, checked: its label, kind and the tasks its training mixture covered."""

    model: Any  # a folder/hub id, or a scripted model object
    label: str
    scripted: bool
    multimodal: bool
    manifest: dict
    kind: str | None = None  # mlan.kinds' kind of a folder or hub id; None for a scripted model

    @property
    def covered(self) -> set[str]:
        return set(self.manifest.get("covers_eval_tasks") or [])


def run_evaluation(
    run: EvalRun,
    *,
    models: list[Any] | None = None,
    suites: list[EvalSuite] | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate each model of `run` on each suite; write per-model results and, for several models, a comparison.

    `models` and `suites` stand in for `run.models` and `run.suite_names()` when given: model
    objects (a scripted model with `generate(requests, max_new_tokens=, stop=)`, `multimodal` and
    `name`: generate suites only) or already loaded `EvalSuite`s. `progress(label, done, total)`
    is called while tasks run.

    Writes to `run.out`: `<label>/results.{json,md}`, per-task samples and cache, `run.yaml` (the
    run config) and, for several models, `comparison.{json,md,png}`. Each `results.json` lists per
    task: task, suite, metric, value, stderr, n, modality, seen (its mixture manifest's
    `covers_eval_tasks` includes the task), engine, source, metrics, extraction (how answers were
    read) and extra (`also_report` metrics); and `averages`, each suite's named averages (MLAN's
    published sets for the unseen suites). Every input is checked before any weights are loaded.
    """
    suite_objs = suites if suites is not None else [load_suite(n, run.suite_overrides) for n in run.suite_names()]
    plan = select_tasks(suite_objs, run.tasks)
    _check_inputs(run, plan)
    entries = _entries(_models(run, models), plan)
    for suite, ts in plan:
        check_local_data(suite, ts, run.data_dir, run.data or None)
    ref_label = _reference(run.reference, entries)
    procs = _processes(run, plan)
    if not procs.main:
        progress = None  # one display, the main process's (its counts cover every process)
    out_dir = Path(run.out)
    if procs.main:
        atomic_write_text(out_dir / "run.yaml", dump_config(run))
    results: list[ModelResults] = []
    for entry in entries:
        model_plan = [(s, ts) for s, ts in plan if entry.multimodal or s.modality != "vision"]
        mr = _evaluate_model(entry, model_plan, run, out_dir / entry.label, progress, procs)
        mr.seen_tasks = sorted(entry.covered)
        mr.averages = named_averages(mr.results, [s for s, _ in model_plan])
        if procs.main:
            write_model_results(mr, out_dir / entry.label)
        results.append(mr)
    report = EvalReport(models=results, out_dir=out_dir, reference=ref_label)
    if len(results) > 1:
        report.comparison = compare(results, ref_label)
        if procs.main:
            write_comparison(report)
    procs.barrier()  # no process returns before the main one has written the results
    return report


def _processes(run: EvalRun, plan) -> parallel.Processes:
    """This process's place when launched as several (accelerate launch, torchrun); checks the combinations
    that cannot work before any weights load."""
    many = parallel.launched_processes() > 1
    if many and run.device_map is not None:
        raise MlanError(
            f"device_map {run.device_map}: spreads one model over this machine's GPUs in one process; "
            "run it without accelerate launch / torchrun (or drop --device-map to evaluate data-parallel)"
        )
    if run.engine == "vllm":
        from mlan.evaluate.vllm_engine import check_vllm

        check_vllm(run, many)
    return parallel.current(cuda=(run.device or kinds.default_device()).startswith("cuda"))


def _models(run: EvalRun, models: list[Any] | None) -> list[Any]:
    """The models to evaluate: given objects, the run's names, or the newest finished run."""
    if models:
        return list(models)
    if run.models:
        return list(run.models)
    latest = latest_run()
    if latest is None:
        raise MlanError(
            "no model given and no finished run recorded under runs/: name one, "
            "e.g. `mlan eval runs/<run>` or a hub id, or train one with `mlan sft RECIPE`"
        )
    return [str(latest)]


def _check_inputs(run: EvalRun, plan: list[tuple[EvalSuite, list[SuiteTask]]]) -> None:
    """The image folder exists and every local data file names a task of the chosen suites."""
    if run.image_dir is not None and not Path(run.image_dir).expanduser().is_dir():
        raise MlanError(f"{run.image_dir}: image folder not found")
    known = {t.name for s, ts in plan for t in ts}
    for task in run.data:
        if task not in known:
            raise MlanError(f"--data {task}=...: no task {task!r} in the chosen suites ({', '.join(sorted(known))})")


def _entries(models: list[Any], plan: list[tuple[EvalSuite, list[SuiteTask]]]) -> list[_Entry]:
    """Check every model (folder, hub access, kind) and give each a unique label."""
    taken: set[str] = set()
    entries = []
    for m in models:
        scripted = hasattr(m, "generate") and not isinstance(m, (str, Path))
        kind = None
        if scripted:
            multimodal, manifest = bool(getattr(m, "multimodal", False)), getattr(m, "manifest", {}) or {}
        else:
            folder = kinds.local_folder(m)
            kinds.check_model_dir(m)
            if folder is None:
                require_hub(str(m), "model", "pass a local model folder", model=True)
            kind = kinds.model_kind(m)
            if kind == kinds.ORIGINAL_LLAVA:
                raise kinds.original_layout_error(m)
            multimodal = kind in kinds.MULTIMODAL_KINDS
            manifest = read_mixture_manifest(m) if folder is not None else {}
        entry = _Entry(m, _label(m, taken), scripted, multimodal, manifest, kind)
        for suite, _ in plan:
            if suite.engine == "lm_eval" and scripted:
                raise MlanError(f"{entry.label}: a scripted model can only run generate suites, not {suite.name!r}")
        entries.append(entry)
    # A text-only LLM has no vision score: in a comparison its vision cells stay empty, alone it is an error.
    vision = [s.name for s, _ in plan if s.modality == "vision"]
    text_only = [e for e in entries if not e.multimodal]
    if vision and text_only and len(text_only) == len(entries):
        raise MlanError(
            f"{text_only[0].model}: suite {vision[0]!r} has vision tasks but this is a text-only model (give a LLaVA-style folder, or drop the suite)"
        )
    for e in text_only if vision else []:
        log.warning("%s is text-only: vision suite(s) %s skipped for it", e.label, ", ".join(vision))
    return entries


def _reference(reference: str | None, entries: list[_Entry]) -> str | None:
    """The label deltas are computed against: the one named (label or path), else the first of several."""
    if reference is None:
        return entries[0].label if len(entries) > 1 else None
    labels = [e.label for e in entries]
    by_path = {str(e.model): e.label for e in entries} | {
        str(Path(str(e.model)).expanduser().resolve()): e.label for e in entries
    }
    label = reference if reference in labels else by_path.get(str(reference)) or by_path.get(str(Path(reference)))
    if label is None:
        raise MlanError(f"--reference {reference}: not one of the evaluated models ({', '.join(labels)})")
    return label


def _task_key(entry: _Entry, suite: EvalSuite, task: SuiteTask, run: EvalRun) -> str:
    model = entry.model
    ident = (
        {"scripted": getattr(model, "name", type(model).__name__)} if entry.scripted else cache.model_identity(model)
    )
    return cache.task_key(ident, suite, task, run)


class _Runner:
    """Runs one model's uncached tasks, loading the model (and its engines) once, on first need; with
    several processes, each on its own device and with its share of every task (mlan.evaluate.parallel)."""

    def __init__(self, entry: _Entry, run: EvalRun, out: Path, procs: parallel.Processes = parallel.ONE):
        self.entry, self.run, self.out, self.procs = entry, run, out, procs
        self.loaded = self.lm = self.generator = None
        self.released: Any = None  # the transformers model's device(s), once freed for vLLM

    def device(self) -> str:
        device = self.run.device or kinds.default_device()
        if self.procs.many and device == "cuda":
            return f"cuda:{self.procs.local_rank}"  # one GPU per process, as the launcher numbered them
        return device

    def _model(self):
        if self.loaded is None:
            self.loaded = load_model(
                self.entry.model, device=self.device(), dtype=self.run.dtype, device_map=self.run.device_map
            )
        return self.loaded

    def release_transformers(self) -> None:
        """Free the transformers model (the lm-eval suites', run first) before vLLM takes its share of the GPU:
        vLLM reserves `gpu_memory_utilization` of the whole memory and would not find it free beside a
        second copy of the weights."""
        if self.loaded is None:
            return
        import gc

        import torch

        self.released = self.device() if self.run.device_map is None else _devices(self.loaded)
        self.lm = self.loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        """Where this model's uncached tasks ran, for results.json: processes, the devices of each (None when
        every task came from the cache) and the generation engine."""
        if self.loaded is not None:
            mine = self.device() if self.run.device_map is None else _devices(self.loaded)
        elif self.generator is not None and not self.entry.scripted:  # vLLM: its own GPUs
            mine = f"cuda x{self.run.tensor_parallel_size} (vLLM)"
            if self.released is not None:
                mine = f"{self.released}, then {mine}"
        elif self.entry.scripted:
            mine = "scripted"
        else:
            mine = None
        devices = self.procs.all_gather(mine)
        return {
            "processes": self.procs.world,
            "devices": None if all(d is None for d in devices) else devices,
            "engine": self.run.engine,
            "backend": self.run.backend,
        }

    def lm_eval_task(self, suite: EvalSuite, t: SuiteTask, seen: bool) -> TaskResult:
        from mlan.evaluate.harness import make_lm, pick_metric, run_lm_eval_tasks  # imports lm-eval

        run = self.run
        if self.lm is None:
            self.lm = make_lm(self._model(), batch_size=run.batch_size, backend=run.backend)
            parallel.share_with_lm_eval(self.lm, self.procs)
        calls = len(getattr(self.lm, "stats", []))
        raw = run_lm_eval_tasks(self.lm, [t], data_dir=run.data_dir, overrides=run.data or None, limit=run.limit)
        # lm-eval returns the results on rank 0 only.
        raw = self.procs.broadcast(raw)[t.name]
        tokens = self._tokens(getattr(self.lm, "stats", [])[calls:])
        value, stderr = pick_metric(raw["metrics"], t.metric)
        extra = {m: float(pick_metric(raw["metrics"], m)[0]) for m in t.also_report}
        return TaskResult(
            task=t.name, suite=suite.name, metric=t.metric, value=float(value), stderr=stderr, n=int(raw["n"] or 0),
            modality=suite.modality, seen=seen, engine="lm_eval", source=raw["source"], metrics=raw["metrics"],
            extraction="lm_eval", extra=extra, backend=run.backend, tokens=tokens,
        )  # fmt: skip

    def _tokens(self, stats) -> dict[str, int]:
        """The mlan backend's token counts of one task, summed over the processes (each ran its share)."""
        mine = [sum(getattr(s, k) for s in stats) for k in ("questions", "tokens", "tokens_lm_eval")]
        per_process = self.procs.all_gather(mine)
        if not any(any(p) for p in per_process):
            return {}  # lm-eval's HFLM counts nothing
        questions, computed, lm_eval = (sum(p[k] for p in per_process) for k in range(3))
        return {"questions": questions, "computed": computed, "lm_eval": lm_eval}

    def generate_task(self, suite: EvalSuite, t: SuiteTask, seen: bool, on_batch) -> TaskResult:
        from mlan.evaluate.generate import HFGenerator, run_generate_task  # loads torch

        run = self.run
        own = own_prompt(suite, self.entry.kind)
        suite = own or suite
        if self.entry.scripted:
            self.generator = self.entry.model
        elif self.generator is None and run.engine == "vllm":
            from mlan.evaluate.vllm_engine import VLLMGenerator

            self.release_transformers()
            self.generator = VLLMGenerator(self.entry.model, run)
        elif self.generator is None:
            self.generator = HFGenerator(self._model(), batch_size=run.batch_size, processes=self.procs)
        data = load_task_data(t, run.data_dir, run.data or None)
        items = to_items(t, data, limit=run.limit, image_dir=run.image_dir)
        if not items:
            raise MlanError(f"{data.source}: no questions for task {t.name!r} (check with_images/without_images)")
        metrics, samples = run_generate_task(
            t, suite, items, self.generator, on_batch=lambda k: on_batch(k, len(items))
        )
        for m in (t.metric, *t.also_report):
            if m not in metrics:
                raise MlanError(
                    f"suite {suite.name}: task {t.name}: metric {m!r} not computed (has: {', '.join(metrics)})"
                )
        if self.procs.main:
            write_samples(self.out / "samples" / f"{suite.name}__{t.name}.jsonl", samples)
        return TaskResult(
            task=t.name, suite=suite.name, metric=t.metric, value=float(metrics[t.metric]),
            stderr=metrics.get(f"{t.metric}_stderr"), n=len(items), modality=suite.modality, seen=seen,
            engine="generate", source=data.source, metrics=metrics, extraction=suite.extraction_of(t),
            extra={m: float(metrics[m]) for m in t.also_report}, prompt_style="chat" if own else None,
        )  # fmt: skip


def _evaluate_model(
    entry: _Entry, plan, run: EvalRun, out: Path, progress: Progress | None, procs: parallel.Processes = parallel.ONE
) -> ModelResults:
    cache_dir = out / "cache"
    todo: list[tuple[EvalSuite, SuiteTask, str]] = []
    done: dict[tuple[str, str], TaskResult] = {}
    for suite, ts in plan:
        for t in ts:
            key = _task_key(entry, suite, t, run)
            hit = None if run.fresh else cache.load_cached(cache_dir, suite.name, t.name, key)
            hit = procs.broadcast(hit)  # every process follows the main one's cache
            if hit is not None:
                log.info("%s: %s/%s from cache", entry.label, suite.name, t.name)
                done[(suite.name, t.name)] = TaskResult(**hit)
            else:
                todo.append((suite, t, key))
    if run.engine == "vllm":  # the lm-eval suites (transformers) first, so vLLM starts on a freed GPU
        todo.sort(key=lambda job: job[0].engine != "lm_eval")
    total = sum(len(ts) for _, ts in plan)
    report = progress or (lambda label, done, total: None)
    report(f"{entry.label}: {len(done)} cached", len(done), total)
    runner = _Runner(entry, run, out, procs)
    for suite, t, key in todo:
        label_task = f"{entry.label}: {suite.name}/{t.name}"
        n_done = len(done)
        report(label_task, n_done, total)
        t0 = time.perf_counter()
        seen = _seen(t, entry.covered)
        if suite.engine == "lm_eval":
            res = runner.lm_eval_task(suite, t, seen)
        else:
            res = runner.generate_task(
                suite,
                t,
                seen,
                lambda k, n, _lt=label_task, _d=n_done, _t0=t0: report(rate_label(_lt, k, n, _t0), _d, total),
            )
        res.seconds = round(time.perf_counter() - t0, 2)
        if procs.main:
            cache.store(cache_dir, suite.name, t.name, key, asdict(res))
        done[(suite.name, t.name)] = res
        log.info("%s: %s %.1f (n=%d, %.1fs)", label_task, t.metric, 100 * res.value, res.n, res.seconds)
        report(label_task, len(done), total)
    ordered = [done[(s.name, t.name)] for s, ts in plan for t in ts]
    for r in ordered:  # the manifest decides, also for results that came from the cache
        r.seen = any(_seen(t, entry.covered) for s, ts in plan for t in ts if s.name == r.suite and t.name == r.task)
    return ModelResults(
        label=entry.label, model=str(getattr(entry.model, "name", entry.model)), results=ordered, run=runner.info()
    )


def _devices(loaded) -> list[str]:
    """The devices a model spread with `device_map` sits on."""
    return sorted({str(d) for d in getattr(loaded.model, "hf_device_map", {}).values()}) or [str(loaded.device)]
