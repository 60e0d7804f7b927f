"""`run_lab`: the three effects in miniature, on a CPU, through mlan's own stages.

Per seed: write the toy world, build a tiny LLaVA around a word-level tokenizer, then
1. pretrain its LLM on the base phrasing P1 (`run_sft`, language model only) and extract that
   LLM (`save_language_model`): the lab's "original LLM";
2. stage 1: align vision tower + projector on captions with the LLM frozen (`run_sft`);
3. stage 2 from the stage-1 model, one run per variant, every mixture the same size
   (`build_mixture` + `run_sft`): vision-only (at several learning rates in the full lab),
   language-only (MLAN), 12.5% and 50% vision (MLAN_v);
4. evaluate every model on held-out language and vision questions (`run_evaluation`);
5. merge the pretrained LLM back into the vision-only model over an alpha sweep and evaluate
   each point (`sweep_merge`).
Every stage reads the lab's shipped configs (`data_mixtures/lab_*.yaml`, `recipes/lab_*.yaml`,
`evaluations/lab_*.yaml`) with the seed's paths filled in, and writes the resolved copy to
`seed<k>/configs/`, so any stage can be rerun by hand with the ordinary commands.

Which stages run and how the configs are filled in is `mlan.lab.plan`; the statistics, the
reading of the effects and the report files are `mlan.lab.report`; this module runs the stages.

The world, sizes, steps and learning rates follow a prototype that showed the effects at this
scale (see the recipes' comments). Seeds are independent and run in parallel processes with
`jobs > 1`; inside one process torch uses `threads` threads (see `DEFAULT_THREADS`).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from mlan import console
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
from mlan.lab.report import LabReport, summarise, write_report
from mlan.lab.results import MergePoint, SeedResult, TaskScore, VariantScore
from mlan.lab.world import vocabulary, write_world
from mlan.merge import merge_models, sweep_merge
from mlan.models import save_language_model
from mlan.tiny import build_word_tokenizer, save_tiny_llava, vicuna_chat_template
from mlan.train.sft import run_sft

# The CLI (mlan/cli/lab.py) imports the plans from here, with run_lab.
__all__ = ["LabPlan", "LabReport", "SeedRun", "full_plan", "quick_plan", "quiet_libraries", "run_lab", "run_seed"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one seed


class SeedRun:
    """The stages of one seed, in `root`, each logged with its time (`timings`)."""

    def __init__(self, root: Path, seed: int, plan: LabPlan):
        self.root, self.seed, self.plan = root, seed, plan
        self.world = root / "world"
        self.configs = root / "configs"
        self.models = root / "models"
        self.timings: dict[str, float] = {}
        self.suites: list[Path] = []  # the resolved lab_language, lab_vision suites
        self.llm: Path | None = None  # the extracted pretrained LLM, once pretraining ran

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
        # The template writes <s> itself: TRL tokenizes training rows without special tokens, and the
        # evaluation strips a leading <s> before its tokenizer adds one, so both see the same tokens.
        tokenizer = build_word_tokenizer(
            vocabulary(), chat_template="{{- bos_token -}}" + vicuna_chat_template(system="")
        )
        init = save_tiny_llava(self.models / "init", "lab", self.seed, overwrite=True, tokenizer=tokenizer)
        self.stage("world", t0, f"{sum(sum(v.values()) for v in index.values())} rows, {len(tokenizer)} tokens")
        for name in ("lab_language", "lab_vision"):
            _, path = resolved("evaluations", name, EvalSuite, self.world, self.configs, {}, f"suite_{name}")
            self.suites.append(path)
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
        """`run_sft` of one stage on its mixture, from `init` or an earlier stage's model."""
        start = init if stage.start == "init" else self.models / stage.start
        mixture = self.mixture(stage.mixture, stage.rows, init)
        changes = recipe_changes(stage, self.plan, self.seed, self.root, start, mixture)
        recipe, _ = resolved(
            "recipes", stage.recipe, SFTRecipe, self.world, self.configs, changes, f"recipe_{stage.name}"
        )
        return run_sft(recipe, resume=False, overwrite=True)

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

    def merge(self, llm: Path) -> list[MergePoint]:
        """Merge `llm` back into the vision-only model at each alpha of the plan and score each point."""
        t0 = time.perf_counter()
        cfg = merge_config(self.plan, self.root, llm, self.suites)
        atomic_write_text(self.configs / "merge.yaml", config_yaml(cfg))

        def evaluate(model_dir: Path, eval_dir: Path) -> list[TaskScore]:
            return self.evaluate(model_dir, self.suites, eval_dir)

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
    scores = [s.run_stage(stage, init) for stage in train_stages(plan)]
    merges = s.merge(s.llm) if plan.merges and s.llm is not None else []
    result = SeedResult(seed, scores, merges, s.timings, round(time.perf_counter() - t_seed, 1))
    atomic_write_json(root / "seed.json", result.to_json())
    return result


# --------------------------------------------------------------------------- seeds in parallel


def _worker_init(verbosity: int, levels: dict[str, int], threads: int) -> None:
    """The parent's console set-up in a worker process (spawned: nothing is inherited), so library
    noise is filtered there too, and its mlan log levels."""
    import torch

    console.setup(verbosity)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    quiet_libraries()
    torch.set_num_threads(threads)


def quiet_libraries() -> None:
    """Silence per-row progress bars of datasets/transformers: the lab logs one line per stage."""
    import transformers

    console.quiet_libraries()
    transformers.utils.logging.set_verbosity_error()


def run_seeds(root: Path, plan: LabPlan) -> list[SeedResult]:
    """Every seed of `plan` in `root/seed<k>`, `plan.jobs` at a time; results in the order of the seeds."""
    jobs = max(1, min(plan.jobs, len(plan.seeds)))
    if jobs == 1:
        return [run_seed(root / f"seed{k}", k, plan) for k in plan.seeds]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child of a process whose OpenMP/torch threads already started can hang.
    levels = {name: logging.getLogger(name).getEffectiveLevel() for name in ("mlan", "mlan.lab")}
    log.info("running %d seeds in %d processes", len(plan.seeds), jobs)
    with ProcessPoolExecutor(
        jobs,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(console.verbosity(), levels, plan.threads),
    ) as pool:
        futures = [pool.submit(run_seed, root / f"seed{k}", k, replace(plan, jobs=1)) for k in plan.seeds]
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
