"""`run_lab`: the papers' effects in miniature, on a CPU, through mlan's own stages.

Per seed: write the toy world, build a tiny LLaVA around a word-level tokenizer, then
1. pretrain its LLM on the base phrasing P1 (`run_sft`, language model only) and extract that
   LLM (`save_language_model`): the lab's "original LLM";
2. stage 1: align vision tower + projector on the base-phrasing scene questions, captions among
   them, with the LLM frozen (`run_sft`);
3. stage 2 from the stage-1 model, one run per variant, every mixture the same size
   (`build_mixture` + `run_sft`): vision-only (at several learning rates, and with Wings' learners,
   in the full lab), language-only (MLAN), 12.5% and 50% vision (MLAN_v), each with what its
   training cost (tokens, seconds);
4. evaluate every model on held-out language and vision questions, and the probe (`run_evaluation`);
5. merge the pretrained LLM back into the vision-only model over an alpha sweep and evaluate
   each point (`sweep_merge`).
Every stage reads the lab's shipped configs (`data_mixtures/lab_*.yaml`, `recipes/lab_*.yaml`,
`evaluations/lab_*.yaml`) with the seed's paths filled in, and writes the resolved copy to
`seed<k>/configs/`, so any stage can be rerun by hand with the ordinary commands.

Which stages run and how the configs are filled in is `mlan.lab.plan`; the statistics and the
reading of the effects are `mlan.lab.reading`, the report files `mlan.lab.report` (plots:
`mlan.lab.plots`); this module runs the stages.

The world, sizes, steps and learning rates follow a prototype that showed E1-E3 at this scale (see
the recipes' comments). Seeds are independent and run in parallel processes with `jobs > 1`;
processes left over run a seed's stage-2 variants in parallel; inside one process torch uses
`threads` threads (see `DEFAULT_THREADS`), or `solo_threads` for the stages a lone seed runs alone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from mlan.config.mixture import MixtureSpec
from mlan.config.recipe import SFTRecipe
from mlan.config.suite import EvalSuite
from mlan.data.mixture import build_mixture
from mlan.evaluate import EvalRun, run_evaluation
from mlan.io import atomic_write_json, atomic_write_text, check_output_dir
from mlan.lab.plan import (
    PRETRAINED_LLM,
    LabPlan,
    TrainStage,
    config_yaml,
    full_plan,
    merge_config,
    mixture_changes,
    quick_plan,
    recipe_changes,
    resolved,
    train_stages,
)
from mlan.lab.processes import pool, quiet_libraries
from mlan.lab.report import LabReport, summarise, write_report
from mlan.lab.results import PROBE_SUITE, MergePoint, SeedResult, TaskScore, TrainCost, VariantScore
from mlan.lab.world import vision_chance, vocabulary, write_world
from mlan.merge import merge_models, sweep_merge
from mlan.models import save_language_model
from mlan.tiny import build_word_tokenizer, save_tiny_llava, vicuna_chat_template
from mlan.train.sft import run_sft

# The CLI (mlan/cli/lab.py) imports the plans from here, with run_lab.
__all__ = ["LabPlan", "LabReport", "SeedRun", "full_plan", "quick_plan", "quiet_libraries", "run_lab", "run_seed"]

log = logging.getLogger(__name__)
# The lab's evaluation suites (evaluations/lab_*.yaml): the scored ones (a text-only model is scored
# on the first alone), then the probe, quoted by the reading outside the vision mean.
SCORED_SUITES = ("lab_language", "lab_vision")
SUITES = (*SCORED_SUITES, PROBE_SUITE)


# --------------------------------------------------------------------------- one seed


class SeedRun:
    """The stages of one seed, in `root`, each logged with its time (`timings`)."""

    def __init__(self, root: Path, seed: int, plan: LabPlan):
        self.root, self.seed, self.plan = root, seed, plan
        self.world = root / "world"
        self.configs = root / "configs"
        self.models = root / "models"
        self.timings: dict[str, float] = {}
        # The resolved suites (written by `prepare`).
        self.suites = [self.configs / f"suite_{name}.yaml" for name in SUITES]
        self.llm: Path | None = None  # the extracted pretrained LLM, once pretraining ran
        self.costs: dict[str, TrainCost] = {}  # trained model -> steps, rows, tokens, seconds
        self.vision_chance: float | None = None  # the world's guessing level on the vision test

    def stage(self, name: str, t0: float, what: str) -> None:
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 1)
        log.info("seed %d · %-22s %s (%.1f s)", self.seed, name, what, dt)

    def prepare(self) -> Path:
        """Write the world, the lab's tokenizer and suites; returns the untrained tiny LLaVA."""
        self.configs.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        plan = self.plan
        index = write_world(self.world, self.seed, n_train=plan.n_train, n_test=plan.n_test, n_images=plan.n_images)
        self.vision_chance = vision_chance(self.world)
        # The template writes <s> itself: TRL tokenizes training rows without special tokens, and the
        # evaluation strips a leading <s> before its tokenizer adds one, so both see the same tokens.
        tokenizer = build_word_tokenizer(
            vocabulary(), chat_template="{{- bos_token -}}" + vicuna_chat_template(system="")
        )
        init = save_tiny_llava(self.models / "init", "lab", self.seed, overwrite=True, tokenizer=tokenizer)
        self.stage("world", t0, f"{sum(sum(v.values()) for v in index.values())} rows, {len(tokenizer)} tokens")
        for name in SUITES:
            resolved("evaluations", name, EvalSuite, self.world, self.configs, {}, f"suite_{name}")
        return init

    def mixture(self, name: str, rows: int | None, tokenizer_dir: Path) -> Path:
        """The shipped mixture `name` for this seed (`rows` examples if given), built once."""
        shipped = None
        if rows is not None:
            spec0, _ = resolved("data_mixtures", name, MixtureSpec, self.world, self.configs, {}, f"mixture_{name}")
            shipped = spec0.modality_split
        changes = mixture_changes(self.seed, tokenizer_dir, rows, shipped)
        spec, _ = resolved("data_mixtures", name, MixtureSpec, self.world, self.configs, changes, f"mixture_{name}")
        out = self.root / "mixtures" / name
        # The vision-only variants at other learning rates share one mixture.
        if not (out / "manifest.json").is_file():
            build_mixture(spec, out, overwrite=True)
        return out

    def train(self, stage: TrainStage, init: Path):
        """`run_sft` of one stage on its mixture, from `init` or an earlier stage's model; records what
        the training cost (tokens from the mixture's manifest)."""
        start = init if stage.start == "init" else self.models / stage.start
        mixture = self.mixture(stage.mixture, stage.rows, init)
        changes = recipe_changes(stage, self.plan, self.seed, self.root, start, mixture)
        recipe, _ = resolved(
            "recipes", stage.recipe, SFTRecipe, self.world, self.configs, changes, f"recipe_{stage.name}"
        )
        res = run_sft(recipe, resume=False, overwrite=True)
        manifest = json.loads((mixture / "manifest.json").read_text(encoding="utf-8"))
        self.costs[stage.scored] = TrainCost.of(manifest, res.steps, res.global_batch_size, res.runtime_s)
        return res

    def evaluate(self, model: Path, suites: list[Path], out_dir: Path) -> list[TaskScore]:
        run = EvalRun(
            models=[str(model)], suites=[str(s) for s in suites], out=str(out_dir), limit=self.plan.eval_limit,
            batch_size=self.plan.eval_batch_size, device="cpu",
        )  # fmt: skip
        report = run_evaluation(run)
        return [(r.suite, r.task, r.modality, r.value) for r in report.models[0].results]

    def run_stage(self, stage: TrainStage, init: Path) -> VariantScore:
        """Train one stage, then score the model it made (the extracted LLM for a text-only stage)."""
        t0 = time.perf_counter()
        res = self.train(stage, init)
        model, suites = self.models / stage.name, self.suites
        if stage.text_only:
            model = self.llm = save_language_model(model, self.models / PRETRAINED_LLM, overwrite=True)
            suites = self.suites[:1]  # the text-only LLM answers no image questions
        self.stage(stage.name, t0, f"{res.steps} steps, loss {res.first_loss:.3f} -> {res.last_loss:.3f}")
        t0 = time.perf_counter()
        score = VariantScore.of(stage.scored, self.evaluate(model, suites, self.root / "eval"))
        self.stage(f"eval {stage.scored}", t0, _fmt_scores(score))
        return score

    def run_variants(self, stages: list[TrainStage], init: Path) -> list[VariantScore]:
        """The stage-2 variants, `plan.jobs` processes at a time (each from the same stage-1 model, into
        its own folders); scores in the order of `stages`."""
        jobs = min(self.plan.jobs, len(stages))
        if jobs <= 1:
            return [self.run_stage(stage, init) for stage in stages]
        for stage in stages:  # built here, once: variants may share a mixture
            self.mixture(stage.mixture, stage.rows, init)
        log.info("seed %d · %d stage-2 variants in %d processes", self.seed, len(stages), jobs)
        with pool(jobs, self.plan.threads) as workers:
            futures = [workers.submit(_run_variant, self.root, self.seed, self.plan, st, init) for st in stages]
            done = [f.result() for f in futures]
        for _, timings, costs in done:
            self.timings.update(timings)
            self.costs.update(costs)
        return [score for score, _, _ in done]

    def merge(self, llm: Path) -> list[MergePoint]:
        """Merge `llm` back into the vision-only model at each alpha of the plan and score each point."""
        t0 = time.perf_counter()
        scored = self.suites[: len(SCORED_SUITES)]  # the probe is read from the trained models only
        cfg = merge_config(self.plan, self.root, llm, scored)
        atomic_write_text(self.configs / "merge.yaml", config_yaml(cfg))

        def evaluate(model_dir: Path, eval_dir: Path) -> list[TaskScore]:
            return self.evaluate(model_dir, scored, eval_dir)

        if cfg.is_sweep:
            sweep = sweep_merge(cfg, overwrite=True, evaluate=evaluate)
            merges = [
                MergePoint(p.alpha, p.scores.get("language"), p.scores.get("vision"),
                           {k: v for k, v in p.scores.items() if "/" in k})
                for p in sweep.rows
            ]  # fmt: skip
        else:  # one alpha is one merge, not a sweep
            alpha = self.plan.alphas[0]
            one = self.root / "merge" / "models" / f"a{alpha:g}-d1"
            merge_models(cfg.model_copy(update={"out": str(one)}), overwrite=True)
            merges = [MergePoint.of(alpha, evaluate(one, self.root / "merge" / "eval"))]
        self.stage("merge sweep", t0, ", ".join(f"a{m.alpha:g}: {_fmt_scores(m)}" for m in merges))
        return merges


def _fmt_scores(sc: VariantScore | MergePoint) -> str:
    return ", ".join(f"{m} {v:.3f}" for m, v in (("language", sc.language), ("vision", sc.vision)) if v is not None)


def run_seed(root: str | Path, seed: int, plan: LabPlan) -> SeedResult:
    """Every stage of one seed in `root`; returns its scores and timings (also `root/seed.json`)."""
    import torch

    torch.set_num_threads(plan.threads)
    root = Path(root)
    t_seed = time.perf_counter()
    s = SeedRun(root, seed, plan)
    init = s.prepare()
    stages = train_stages(plan)
    torch.set_num_threads(plan.solo_threads or plan.threads)
    scores = [s.run_stage(stage, init) for stage in stages if not stage.variant]
    torch.set_num_threads(plan.threads)
    scores += s.run_variants([stage for stage in stages if stage.variant], init)
    merges = s.merge(s.llm) if plan.merges and s.llm is not None else []
    seconds = round(time.perf_counter() - t_seed, 1)
    result = SeedResult(seed, scores, merges, s.timings, seconds, s.costs, s.vision_chance)
    atomic_write_json(root / "seed.json", result.to_json())
    return result


def _run_variant(root: Path, seed: int, plan: LabPlan, stage: TrainStage, init: Path):
    """One stage-2 variant in a worker process: its score, its stage timings and its cost."""
    s = SeedRun(root, seed, plan)
    score = s.run_stage(stage, init)
    return score, s.timings, s.costs


# --------------------------------------------------------------------------- processes


def run_seeds(root: Path, plan: LabPlan) -> list[SeedResult]:
    """Every seed of `plan` in `root/seed<k>`, `plan.jobs` processes at a time; results in the order of
    the seeds. Processes beyond one per seed go to each seed's stage-2 variants."""
    jobs = max(1, min(plan.jobs, len(plan.seeds)))
    per_seed = replace(plan, jobs=max(1, plan.jobs // len(plan.seeds)))
    if jobs == 1:
        return [run_seed(root / f"seed{k}", k, per_seed) for k in plan.seeds]
    log.info("running %d seeds in %d processes", len(plan.seeds), jobs)
    with pool(jobs, plan.threads) as workers:
        futures = [workers.submit(run_seed, root / f"seed{k}", k, per_seed) for k in plan.seeds]
        return [f.result() for f in futures]


# --------------------------------------------------------------------------- the whole lab


def run_lab(out: str | Path, plan: LabPlan, *, overwrite: bool = False) -> LabReport:
    """Run the lab for every seed of `plan` and write the report to `out`.

    Writes `seed<k>/` (world, configs, mixtures, models, evaluations, merge sweep) per seed and
    `lab.json` (every score per seed, variant and alpha; summary; effects; timings), `lab.md` (the
    table and the reading) and `lab.png` (language against vision: variants as points, the merge
    sweep as a curve). With `overwrite`, an existing `out` is replaced.
    """
    plan.check()
    out = Path(out)
    check_output_dir(out, overwrite)
    # Written in place, not through a temporary folder: every stage records absolute paths (mixture
    # manifests, train_results.json, resolved configs) that must stay true. `lab.json` is written
    # last, so a folder without it is an unfinished lab.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t_start = time.perf_counter()
    results = run_seeds(out, plan)
    report = write_report(out, summarise(plan, results, time.perf_counter() - t_start))
    log.info("lab finished in %.0f s: %s", time.perf_counter() - t_start, out)
    return report
