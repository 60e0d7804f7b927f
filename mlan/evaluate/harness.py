"""lm-evaluation-harness in process, on its standard task definitions, with local data when asked.

Each task is lm-eval's own YAML (`lm_eval/tasks/<...>.yaml`) pulled in with lm-eval's
`include:`; only the dataset location (and, when set, the few-shot count) is overridden, so
prompts, choices, metrics and filters stay the ones papers report. The model is handed over as
an object (mlan's `SharedContextLM`, an lm-eval `HFLM` that computes each shared context once,
mlan.evaluate.backend; or `HFLM(pretrained=<model>)` itself with `backend="lm_eval"`): a LLaVA folder is
evaluated through its extracted language model (logits equal to the LLaVA's on text) and a plain LLM the same way.

Two deliberate departures, both score-preserving at lm-eval's default 0-shot:
- MMLU runs as one task over all subjects (hub `cais/mmlu` config `all`, or one local file)
  with the per-subject description rendered from each row's `subject`; lm-eval's `mmlu` group
  averages its 57 subtasks weighted by size, which is the same number.
- RACE local rows may be in the one-question-per-row schema of `ehovy/race` (which the unseen
  suite also reads); they are grouped by article into lm-eval's `EleutherAI/race` schema.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import yaml

from mlan.config.suite import SuiteTask
from mlan.errors import MlanError
from mlan.evaluate.tasks import local_path
from mlan.schemas import read_rows

log = logging.getLogger(__name__)

# lm-eval task -> its standard YAML (relative to lm_eval/tasks) and the split it evaluates on.
STANDARD = {
    "gsm8k": ("gsm8k/gsm8k.yaml", "test"),
    "commonsense_qa": ("commonsense_qa/default.yaml", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "race": ("race/race.yaml", "test"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "mmlu": ("mmlu/default/_default_template_yaml", "test"),
    "openbookqa": ("openbookqa/openbookqa.yaml", "test"),
}
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {{subject.replace('_', ' ')}}.\n\n"


def lm_eval_tasks_dir() -> Path:
    """Where lm-eval's built-in task YAMLs are installed."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def task_yaml(task: SuiteTask, data_dir, overrides, workdir: Path) -> tuple[dict, str]:
    """The YAML mapping for one task (standard definition + data overrides) and its source label."""
    name = task.lm_eval_task or task.name
    rel, split = STANDARD[name]
    std = lm_eval_tasks_dir() / rel
    cfg: dict = {"include": str(std), "task": f"mlan_{task.name}", "task_alias": task.name}
    if name == "mmlu":
        cfg |= {"dataset_path": "cais/mmlu", "dataset_name": "all", "description": MMLU_DESCRIPTION}
    local = local_path(task, data_dir, overrides)
    if local is None:
        source = f"hub:{cfg.get('dataset_path', task.hub.path)}"
        if task.hub.revision:  # lm-eval hands dataset_kwargs to datasets.load_dataset
            cfg["dataset_kwargs"] = {"revision": task.hub.revision}
            source += f"@{task.hub.revision}"
    else:
        if not local.is_file():
            raise MlanError(f"{local}: missing local data for task {task.name!r}")
        files = {split: str(_prepare_local(name, local, workdir, split))}
        few = task.num_fewshot
        std_cfg = yaml.safe_load(_strip_functions(std.read_text())) or {}
        if few is None:
            few = std_cfg.get("num_fewshot", 0) or 0
        fewshot_split = std_cfg.get("fewshot_split") or std_cfg.get("training_split")
        if few and fewshot_split:
            fpath = local.parent / f"{fewshot_split}{local.suffix}"
            if not fpath.is_file():
                raise MlanError(
                    f"{fpath}: missing local few-shot data for task {task.name!r} ({few}-shot draws from its {fewshot_split} split)"
                )
            files[fewshot_split] = str(_prepare_local(name, fpath, workdir, fewshot_split))
        cfg |= {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}
        # Only the splits we have files for may be named, or datasets looks for the others.
        for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
            cfg[key] = None
        cfg["test_split"] = split
        if few and fewshot_split:
            cfg["fewshot_split"] = fewshot_split
        source = str(local)
    if task.num_fewshot is not None:
        cfg["num_fewshot"] = task.num_fewshot
    return cfg, source


def _strip_functions(text: str) -> str:
    # Reading the standard YAML for a few plain keys; `!function` tags need lm-eval's loader.
    return text.replace("!function", "")


def _prepare_local(name: str, path: Path, workdir: Path, split: str) -> Path:
    """Local rows as lm-eval's loader expects them (JSON lines; RACE grouped by article)."""
    rows = read_rows(path)
    if name == "race" and rows and "problems" not in rows[0]:
        rows = _race_by_article(rows, path)
    elif path.suffix == ".jsonl":
        return path.resolve()
    out = workdir / f"{name}_{split}.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def _race_by_article(rows: list[dict], path: Path) -> list[dict]:
    """ehovy/race rows (one question each) -> EleutherAI/race rows (one article, its questions in order)."""
    grouped: dict[str, dict] = {}
    try:
        for r in rows:
            g = grouped.setdefault(r["article"], {"article": r["article"], "problems": []})
            g["problems"].append({"question": r["question"], "options": list(r["options"]), "answer": r["answer"]})
    except KeyError as e:
        raise MlanError(
            f"{path}: RACE rows need article/question/options/answer (or article/problems); missing {e}"
        ) from None
    # lm-eval scores the last question of each article with the earlier ones (and their answers) as
    # context; its hub copy stores `problems` as a Python literal string.
    return [{"article": g["article"], "problems": repr(g["problems"])} for g in grouped.values()]


def make_lm(loaded, batch_size: int | str = 8, backend: str = "mlan"):
    """The lm-eval model object around an already-loaded causal LM (a LLaVA is reduced to its language model):
    mlan's `SharedContextLM` (mlan.evaluate.backend; HFLM's results, each shared context computed once) or,
    with `backend="lm_eval"`, lm-eval's own `HFLM`."""
    from mlan.evaluate.backend import make_backend
    from mlan.models import extract_language_model
    from mlan.wings import get_runtime

    model = extract_language_model(loaded.model) if loaded.multimodal else loaded.model
    if loaded.multimodal and get_runtime(loaded.model) is not None:
        # A Wings model's learners hook into the LLaVA forward (they take their side inputs there), so
        # the LLaVA itself serves as the causal LM: on text-only input it is one.
        model = loaded.model
    return make_backend(backend, model, loaded.tokenizer, batch_size)


def run_lm_eval_tasks(
    lm,
    tasks: list[SuiteTask],
    *,
    data_dir=None,
    overrides=None,
    limit: int | None = None,
    seed: int = 1234,
    log_samples: bool = False,
) -> dict[str, dict] | None:
    """Evaluate tasks with lm-eval; returns {task name: {"metrics": {...}, "n": int, "source": str}} (None on
    a process other than rank 0 of several, mlan.evaluate.parallel); with `log_samples`, also "samples":
    lm-eval's per-document records (its requests' arguments, responses and per-document metrics)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mlan-lm-eval-") as tmp:
        workdir = Path(tmp)
        sources = {}
        for t in tasks:
            cfg, sources[t.name] = task_yaml(t, data_dir, overrides, workdir)
            (workdir / f"mlan_{t.name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        # include_defaults=False: indexing lm-eval's ~10k built-in YAMLs costs seconds; ours include them by path.
        tm = TaskManager(include_path=str(workdir), include_defaults=False)
        with _quiet_lm_eval():
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=[f"mlan_{t.name}" for t in tasks],
                task_manager=tm,
                limit=limit,
                log_samples=log_samples,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    if res is None:
        return None  # one of several processes: lm-eval gives the results to rank 0 only
    for t in tasks:
        key = f"mlan_{t.name}"
        raw = res["results"][key]
        metrics = {k: v for k, v in raw.items() if k != "alias" and isinstance(v, (int, float))}
        n = res.get("n-samples", {}).get(key, {}).get("effective")
        out[t.name] = {"metrics": metrics, "n": n, "source": sources[t.name]}
        if log_samples:
            out[t.name]["samples"] = res["samples"][key]
    return out


@contextlib.contextmanager
def _quiet_lm_eval():
    """While lm-eval runs: no `git describe` error on stderr, and no tqdm bars when the caller
    turned transformers' bars off (the mlan CLI does; it shows one bar for the evaluation).

    lm-eval records the git commit of the working folder in its results, which mlan does not keep,
    by running `git describe` with stderr left on the terminal ("fatal: not a git repository"
    outside one); and it draws tqdm bars per task and request type with no switch to turn them off.
    Both are replaced in lm-eval's own modules for the duration of the call only.
    """
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.models.huggingface
    import transformers

    from mlan.evaluate import backend

    patches = [(lm_eval.evaluator, "get_git_commit_hash", lambda: None)]
    if not transformers.utils.logging.is_progress_bar_enabled():
        for module in (lm_eval.api.model, lm_eval.api.task, lm_eval.models.huggingface, backend):
            patches.append((module, "tqdm", _silent_tqdm))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _silent_tqdm(*args, **kwargs):
    from tqdm import tqdm

    return tqdm(*args, **{**kwargs, "disable": True})


def pick_metric(metrics: dict[str, float], metric: str) -> tuple[float, float | None]:
    """(value, stderr) of `metric` among lm-eval's keys (`acc,none`, `exact_match,strict-match`)."""
    key = metric if "," in metric else f"{metric},none"
    if key not in metrics:
        raise MlanError(
            f"metric {metric!r} not reported by lm-eval (has: {', '.join(k for k in metrics if 'stderr' not in k)})"
        )
    name, _, filt = key.partition(",")
    stderr = metrics.get(f"{name}_stderr,{filt}")
    return metrics[key], (stderr if isinstance(stderr, (int, float)) else None)
