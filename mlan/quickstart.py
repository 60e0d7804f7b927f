"""The whole pipeline on bundled data with a tiny model, offline, on a CPU, in minutes.

Each stage goes through the same library function the CLI uses; the quickstart only
chooses small inputs and records what each stage produced.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlan.config.base import load_config
from mlan.config.merge import MergeConfig
from mlan.config.mixture import MixtureSpec
from mlan.config.recipe import SFTRecipe
from mlan.config.shipped import validate_shipped
from mlan.data.mixture import build_mixture
from mlan.evaluate import EvalRun, run_evaluation
from mlan.io import atomic_write_json, check_output_dir
from mlan.merge import merge_models
from mlan.models import save_language_model
from mlan.paths import resolve_config
from mlan.tiny import SIZES, save_tiny_llava
from mlan.train.sft import run_sft

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What one stage produced."""

    stage: str
    output: str
    summary: str
    seconds: float


@dataclass
class QuickstartResult:
    """All stages of one quickstart run, in order."""

    out: Path
    stages: list[StageResult] = field(default_factory=list)
    table: str = ""
    """The evaluation's side-by-side table (markdown)."""


def run_quickstart(out: str | Path, overwrite: bool = False, size: str = "tiny", limit: int = 40) -> QuickstartResult:
    """Run every stage on bundled data; returns what each stage produced (also `summary.json`).

    Stages: validate the shipped configs, build a tiny LLaVA, build the quickstart mixture,
    fine-tune with `recipes/tiny.yaml`, extract the base language model, merge it back into
    the tuned model (task arithmetic), and evaluate base LLM, tuned and merged models side by
    side on the bundled quickstart suite (`limit` questions per task).
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result = QuickstartResult(out=out)

    def stage(name: str, fn, *args):
        t0 = time.perf_counter()
        value, output, summary = fn(*args)
        result.stages.append(StageResult(name, str(output), summary, round(time.perf_counter() - t0, 1)))
        log.info("[%s] %s", name, summary)
        return value

    stage("configs", _configs)
    model_dir = stage("tiny-model", _tiny_model, out, size)
    mixture = stage("build-mixture", _mixture, out)
    sft = stage("sft", _sft, out, model_dir, mixture)
    base_llm, merged = stage("merge", _merge, out, model_dir, sft)
    report = stage("eval", _evaluate, out, [base_llm, sft, merged], limit)
    result.table = report.table()
    atomic_write_json(out / "summary.json", [vars(r) for r in result.stages])
    return result


# Each stage returns (what the next stages need, its output folder, a one-line summary).


def _configs():
    loaded = validate_shipped()
    return None, "recipes/ data_mixtures/ evaluations/", f"{len(loaded)} shipped YAML files valid"


def _tiny_model(out: Path, size: str):
    model_dir = save_tiny_llava(out / "base-model", size=size, seed=0)
    s = SIZES[size]
    return model_dir, model_dir, f"LLaVA {size}: Llama {s.layers}x{s.hidden} + CLIP {s.vision_layers}x{s.vision_hidden}"


def _mixture(out: Path):
    spec = load_config(resolve_config("quickstart", "data_mixtures"), MixtureSpec)
    mix = build_mixture(spec, out / "mixture")
    ratios = mix.manifest["ratios"]
    summary = (
        f"{mix.train_rows} train + {mix.validation_rows} validation rows; language share "
        f"{100 * ratios['examples_language_share']:.1f}% of examples, "
        f"{100 * ratios['tokens_language_share']:.1f}% of tokens"
    )
    return mix.out, mix.out, summary


def _sft(out: Path, model_dir: Path, mixture: Path):
    recipe = load_config(
        resolve_config("tiny", "recipes"),
        SFTRecipe,
        [f"model.path={model_dir}", "data.spec=null", f"data.mixture={mixture}", f"output.dir={out / 'sft'}"],
    )
    sft = run_sft(recipe)
    summary = f"{sft.steps} steps, loss {sft.first_loss:.2f} -> {sft.last_loss:.2f}" + (
        f", validation loss {sft.eval_loss:.2f}" if sft.eval_loss is not None else ""
    )
    return sft.output_dir, sft.output_dir, summary


def _merge(out: Path, model_dir: Path, tuned: Path):
    base_llm = save_language_model(model_dir, out / "base-llm")
    config = MergeConfig(
        multimodal=str(tuned), original=str(base_llm), method="task_arithmetic", alpha=0.1, out=str(out / "merged")
    )
    merged = merge_models(config)
    summary = (
        f"{merged.method} alpha {merged.alpha}: {merged.merged_tensors} language-model tensors merged, "
        f"{merged.copied_tensors} vision tensors copied"
    )
    return (base_llm, merged.out), merged.out, summary


def _evaluate(out: Path, models: list[Path], limit: int):
    run = EvalRun(
        models=[str(m) for m in models],
        suites=["quickstart"],
        limit=limit,
        out=str(out / "eval"),
        reference=str(models[0]),
    )
    report = run_evaluation(run)
    return report, out / "eval", f"{len(report.models)} models x quickstart suite, {limit} questions per task"
