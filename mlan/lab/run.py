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

The world, sizes, steps and learning rates follow a prototype that showed the effects at this
scale (see the recipes' comments). Seeds are independent and run in parallel processes with
`jobs > 1`; inside one process torch uses `threads` threads (see `DEFAULT_THREADS`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mlan.errors import MlanError
from mlan.io import atomic_write_json, atomic_write_text, check_output_dir

log = logging.getLogger(__name__)

# The placeholder prefix of every path in the lab's shipped configs; replaced per seed.
WORLD_PLACEHOLDER = "runs/lab/world"
# One intra-op thread per process. On an idle 2-core machine torch's default (2 threads) is 15-20%
# faster per step, but with other processes on the cores (parallel seeds, other users) one thread was
# 3x faster (OpenMP threads spin while they wait for a core): this degrades least. See
# benchmarks/lab_step.py. The cores are used by running seeds in parallel processes instead.
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class Variant:
    """One stage-2 run: its mixture and learning rate (None: the recipe's)."""

    name: str
    mixture: str
    label: str
    learning_rate: float | None = None


VARIANTS = {
    v.name: v
    for v in (
        Variant("vision_only", "lab_vision_only", "vision only"),
        Variant("language_only", "lab_language_only", "language only (MLAN)"),
        Variant("mlan_v12", "lab_mlan_v12", "12.5% vision (MLAN_v)"),
        Variant("mlan_v50", "lab_mlan_v50", "50% vision (MLAN_v)"),
        Variant("vision_only_lr3e-4", "lab_vision_only", "vision only, lr 3e-4", 3e-4),
        Variant("vision_only_lr2e-3", "lab_vision_only", "vision only, lr 2e-3", 2e-3),
    )
}
QUICK_VARIANTS = ("vision_only", "language_only", "mlan_v12")
FULL_VARIANTS = tuple(VARIANTS)
ALPHAS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class LabPlan:
    """What one lab run does: sizes of the world, steps of each stage, variants, merge alphas.

    `None` steps keep the shipped recipe's value. Tests shrink everything; the CLI uses
    `quick_plan` or `full_plan`.
    """

    seeds: list[int]
    variants: list[str]
    alphas: list[float] = field(default_factory=lambda: list(ALPHAS))
    n_train: int = 48000
    n_test: int = 200
    n_images: int = 4000
    pretrain_steps: int | None = None
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    pretrain_rows: int | None = None
    stage1_rows: int | None = None
    stage2_rows: int | None = None
    batch_size: int | None = None
    eval_limit: int | None = None
    eval_batch_size: int = 100
    jobs: int = 1
    threads: int = DEFAULT_THREADS


def quick_plan(seeds: list[int] | None = None) -> LabPlan:
    """One seed, the essential variants (vision-only, language-only, 12.5% vision) and the merge sweep."""
    return LabPlan(seeds=list(seeds or [0]), variants=list(QUICK_VARIANTS))


def full_plan(seeds: list[int] | None = None) -> LabPlan:
    """Three seeds, every variant (the vision-only run at three learning rates), the merge sweep."""
    seeds = list(seeds or [0, 1, 2])
    # All seeds at once: with one thread each, 3 processes on 2 cores finish together, where 2 + 1
    # would leave a core idle during the last seed.
    return LabPlan(seeds=seeds, variants=list(FULL_VARIANTS), jobs=min(len(seeds), 2 * (os.cpu_count() or 1)))


@dataclass
class LabReport:
    """What `run_lab` produced: every score, the summary over seeds, the reading of the effects."""

    out: Path
    data: dict[str, Any]
    table: str
    reading: str
    files: dict[str, str]


# --------------------------------------------------------------------------- configs


def _relocate(value: Any, world: Path) -> Any:
    """Replace the world placeholder in every string of a config tree."""
    if isinstance(value, str) and value.startswith(WORLD_PLACEHOLDER):
        return str(world) + value[len(WORLD_PLACEHOLDER) :]
    if isinstance(value, dict):
        return {k: _relocate(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, world) for v in value]
    return value


def _resolved(kind: str, name: str, model, world: Path, configs: Path, changes: dict[str, Any], save_as: str):
    """A shipped lab config with the seed's paths and `changes` (dotted keys) applied, validated and saved."""
    import yaml

    from mlan.config.base import read_yaml, validate_config
    from mlan.paths import resolve_config

    src = resolve_config(name, kind)
    data = _relocate(read_yaml(src), world)
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    config = validate_config(data, model, source=f"{src} (lab: {save_as})")
    path = configs / f"{save_as}.yaml"
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return config, path


# --------------------------------------------------------------------------- one seed


class _Seed:
    """The stages of one seed, in `root`, each logged with its time."""

    def __init__(self, root: Path, seed: int, plan: LabPlan):
        self.root, self.seed, self.plan = root, seed, plan
        self.world = root / "world"
        self.configs = root / "configs"
        self.timings: dict[str, float] = {}
        self.suites: list[Path] = []

    def stage(self, name: str, t0: float, what: str) -> None:
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 1)
        log.info("seed %d · %-22s %s (%.1f s)", self.seed, name, what, dt)

    def mixture(self, name: str, rows: int | None, tokenizer_dir: Path) -> Path:
        from mlan.config.mixture import MixtureSpec
        from mlan.data.mixture import build_mixture

        changes: dict[str, Any] = {"seed": self.seed, "tokenizer": str(tokenizer_dir)}
        if rows is not None:
            spec0, _ = _resolved("data_mixtures", name, MixtureSpec, self.world, self.configs, {}, f"mixture_{name}")
            split = spec0.modality_split
            total = split.language + split.vision
            vision = round(rows * split.vision / total)
            changes["modality_split"] = {"language": rows - vision, "vision": vision}
        spec, _ = _resolved("data_mixtures", name, MixtureSpec, self.world, self.configs, changes, f"mixture_{name}")
        out = self.root / "mixtures" / name
        if not (out / "manifest.json").is_file():
            build_mixture(spec, out, overwrite=True)
        return out

    def sft(self, recipe: str, save_as: str, model: Path, mixture: Path, steps: int | None, lr: float | None = None):
        from mlan.config.recipe import SFTRecipe
        from mlan.train.sft import run_sft

        changes: dict[str, Any] = {
            "name": save_as,
            "model.path": str(model),
            "data.mixture": str(mixture),
            "output.dir": str(self.root / "models" / save_as),
            "training.seed": self.seed,
        }
        if steps is not None:
            changes["training.max_steps"] = steps
        if lr is not None:
            changes["training.learning_rate"] = lr
        if self.plan.batch_size is not None:
            changes["training.per_device_train_batch_size"] = self.plan.batch_size
        recipe, _ = _resolved("recipes", recipe, SFTRecipe, self.world, self.configs, changes, f"recipe_{save_as}")
        return run_sft(recipe, resume=False, overwrite=True)

    def evaluate(self, model: Path, vision: bool = True) -> dict[str, Any]:
        from mlan.evaluate import run_evaluation

        suites = self.suites if vision else self.suites[:1]
        report = run_evaluation(
            [model], [str(s) for s in suites], out_dir=self.root / "eval", limit=self.plan.eval_limit,
            batch_size=self.plan.eval_batch_size, device="cpu",
        )  # fmt: skip
        return _scores([(r.suite, r.task, r.modality, r.value) for r in report.models[0].results])


def _scores(results: list[tuple[str, str, str, float]]) -> dict[str, Any]:
    tasks = {f"{s}/{t}": v for s, t, _, v in results}
    out: dict[str, Any] = {"tasks": tasks}
    for modality in ("language", "vision"):
        vals = [v for _, _, m, v in results if m == modality]
        out[modality] = sum(vals) / len(vals) if vals else None
    return out


def run_seed(root: str | Path, seed: int, plan: LabPlan) -> dict[str, Any]:
    """Every stage of one seed in `root`; returns its scores and timings (also `root/seed.json`)."""
    import torch

    from mlan.config.merge import MergeConfig
    from mlan.config.suite import EvalSuite
    from mlan.lab.world import vocabulary, write_world
    from mlan.merge.sweep import sweep_merge
    from mlan.models import save_language_model
    from mlan.tiny import build_word_tokenizer, save_tiny_llava, vicuna_chat_template

    torch.set_num_threads(plan.threads)
    root = Path(root)
    s = _Seed(root, seed, plan)
    s.configs.mkdir(parents=True, exist_ok=True)
    scores: dict[str, Any] = {}
    t_seed = time.perf_counter()

    t0 = time.perf_counter()
    index = write_world(s.world, seed, n_train=plan.n_train, n_test=plan.n_test, n_images=plan.n_images)
    # The template writes <s> itself: TRL tokenizes training rows without special tokens, and the
    # evaluation strips a leading <s> before its tokenizer adds one, so both see the same tokens.
    tokenizer = build_word_tokenizer(vocabulary(), chat_template="{{- bos_token -}}" + vicuna_chat_template(system=""))
    init = save_tiny_llava(root / "models" / "init", "lab", seed, overwrite=True, tokenizer=tokenizer)
    s.stage("world", t0, f"{sum(sum(v.values()) for v in index.values())} rows, {len(tokenizer)} tokens")
    for name in ("lab_language", "lab_vision"):
        _, path = _resolved("evaluations", name, EvalSuite, s.world, s.configs, {}, f"suite_{name}")
        s.suites.append(path)

    def trained(name: str, res, t0: float) -> None:
        s.stage(name, t0, f"{res.steps} steps, loss {res.first_loss:.3f} -> {res.last_loss:.3f}")

    # 1. pretraining the LLM
    t0 = time.perf_counter()
    mix = s.mixture("lab_pretrain", plan.pretrain_rows, init)
    res = s.sft("lab_pretrain", "pretrain", init, mix, plan.pretrain_steps)
    llm = save_language_model(root / "models" / "pretrain", root / "models" / "pretrained_llm", overwrite=True)
    trained("pretrain", res, t0)
    t0 = time.perf_counter()
    scores["pretrained_llm"] = s.evaluate(llm, vision=False)
    s.stage("eval pretrained_llm", t0, _fmt_scores(scores["pretrained_llm"]))

    # 2. stage 1
    t0 = time.perf_counter()
    mix = s.mixture("lab_captions", plan.stage1_rows, init)
    res = s.sft("lab_stage1", "stage1", root / "models" / "pretrain", mix, plan.stage1_steps)
    trained("stage1", res, t0)
    t0 = time.perf_counter()
    scores["stage1"] = s.evaluate(root / "models" / "stage1")
    s.stage("eval stage1", t0, _fmt_scores(scores["stage1"]))

    # 3. stage 2 variants, all from the same stage-1 model
    for name in plan.variants:
        v = VARIANTS[name]
        t0 = time.perf_counter()
        mix = s.mixture(v.mixture, plan.stage2_rows, init)
        res = s.sft("lab_stage2", name, root / "models" / "stage1", mix, plan.stage2_steps, v.learning_rate)
        trained(name, res, t0)
        t0 = time.perf_counter()
        scores[name] = s.evaluate(root / "models" / name)
        s.stage(f"eval {name}", t0, _fmt_scores(scores[name]))

    # 4. merging the pretrained LLM back into the vision-only model
    merges: dict[str, Any] = {}
    if "vision_only" in plan.variants and plan.alphas:
        t0 = time.perf_counter()
        cfg = MergeConfig(
            multimodal=str(root / "models" / "vision_only"),
            original=str(llm),
            method="task_arithmetic",
            alpha=list(plan.alphas) if len(plan.alphas) > 1 else plan.alphas[0],
            out=str(root / "merge"),
            sweep={"suites": [str(p) for p in s.suites], "criterion": "mean", "keep_merged": True, "device": "cpu"},
        )
        atomic_write_text(s.configs / "merge.yaml", _yaml(cfg))

        def evaluate(model_dir: Path, eval_dir: Path):
            from mlan.evaluate import run_evaluation

            rep = run_evaluation(
                [model_dir], [str(p) for p in s.suites], out_dir=eval_dir, limit=plan.eval_limit,
                batch_size=plan.eval_batch_size, device="cpu",
            )  # fmt: skip
            return [(r.suite, r.task, r.modality, r.value) for r in rep.models[0].results]

        if cfg.is_sweep:
            sweep = sweep_merge(cfg, overwrite=True, evaluate=evaluate)
            for p in sweep.rows:
                merges[f"{p.alpha:g}"] = {
                    "tasks": {k: v for k, v in p.scores.items() if "/" in k},
                    "language": p.scores.get("language"),
                    "vision": p.scores.get("vision"),
                }
        else:
            from mlan.merge import merge_models

            one = root / "merge" / "models" / f"a{plan.alphas[0]:g}-d1"
            merge_models(cfg.model_copy(update={"out": str(one)}), overwrite=True)
            merges[f"{plan.alphas[0]:g}"] = _scores(evaluate(one, root / "merge" / "eval"))
        s.stage("merge sweep", t0, ", ".join(f"a{a}: {_fmt_scores(m)}" for a, m in merges.items()))

    out = {
        "seed": seed,
        "scores": scores,
        "merge": merges,
        "timings": s.timings,
        "seconds": round(time.perf_counter() - t_seed, 1),
    }
    atomic_write_json(root / "seed.json", out)
    return out


def _yaml(config) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _fmt_scores(sc: dict[str, Any]) -> str:
    parts = []
    for m in ("language", "vision"):
        if sc.get(m) is not None:
            parts.append(f"{m} {sc[m]:.3f}")
    return ", ".join(parts)


def _worker_init(levels: dict[str, int], threads: int) -> None:
    """Logging and quiet progress bars in a worker process (spawned: nothing is inherited)."""
    import torch

    logging.basicConfig(level=logging.WARNING, format="%(message)s", force=True)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    quiet_libraries()
    torch.set_num_threads(threads)


def quiet_libraries() -> None:
    """Silence per-row progress bars of datasets/transformers: the lab logs one line per stage."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


# --------------------------------------------------------------------------- the whole lab


def run_lab(out: str | Path, plan: LabPlan, *, overwrite: bool = False) -> LabReport:
    """Run the lab for every seed of `plan` and write the report to `out`.

    Writes `seed<k>/` (world, configs, mixtures, models, evaluations, merge sweep) per seed and
    `lab.json` (every score per seed, variant and alpha; summary; effects; timings), `lab.md` (the
    table and the reading) and `lab.png` (language against vision: variants as points, the merge
    sweep as a curve). With `overwrite`, an existing `out` is replaced.
    """
    unknown = [v for v in plan.variants if v not in VARIANTS]
    if unknown:
        raise MlanError(f"variant {unknown[0]!r}: unknown (known: {', '.join(VARIANTS)})")
    if not plan.seeds:
        raise MlanError("--seeds: give at least one seed")
    if len(set(plan.seeds)) != len(plan.seeds):
        raise MlanError(f"--seeds {','.join(map(str, plan.seeds))}: a seed appears twice")
    out = Path(out)
    check_output_dir(out, overwrite)
    # Written in place, not through a temporary folder: every stage records absolute paths (mixture
    # manifests, train_results.json, resolved configs) that must stay true. `lab.json` is written
    # last, so a folder without it is an unfinished lab.
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t_start = time.perf_counter()
    results = _run_seeds(out, plan)
    data, table, reading = write_report(out, plan, results, time.perf_counter() - t_start)
    files = {k: str(out / f"lab.{k}") for k in ("json", "md", "png")}
    log.info("lab finished in %.0f s: %s", time.perf_counter() - t_start, out)
    return LabReport(out=out, data=data, table=table, reading=reading, files=files)


def write_report(
    out: Path, plan: LabPlan, results: list[dict[str, Any]], seconds: float
) -> tuple[dict[str, Any], str, str]:
    """Summarise the seeds' results and write `lab.png`, `lab.md` and (last) `lab.json` to `out`."""
    data = summarise(plan, results, seconds=seconds)
    table = lab_table(data)
    reading = data["reading"]
    plot_lab(data, out / "lab.png")
    atomic_write_text(
        out / "lab.md",
        f"# mlan lab\n\nAccuracy (%) on held-out questions: language = mean of the four P1 tasks, vision = scene "
        f"questions with images; [min-max] over seeds.\n\n{table}\n\n## Reading\n\n{reading}\n\n"
        f"## Time per stage (s)\n\n{timings_table(data)}\n",
    )
    atomic_write_json(out / "lab.json", data)
    return data, table, reading


def _run_seeds(root: Path, plan: LabPlan) -> list[dict[str, Any]]:
    jobs = max(1, min(plan.jobs, len(plan.seeds)))
    if jobs == 1:
        return [run_seed(root / f"seed{k}", k, plan) for k in plan.seeds]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child of a process whose OpenMP/torch threads already started can hang.
    levels = {name: logging.getLogger(name).getEffectiveLevel() for name in ("mlan", "mlan.lab")}
    log.info("running %d seeds in %d processes", len(plan.seeds), jobs)
    with ProcessPoolExecutor(
        jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(levels, plan.threads)
    ) as pool:
        futures = [pool.submit(run_seed, root / f"seed{k}", k, replace(plan, jobs=1)) for k in plan.seeds]
        return [f.result() for f in futures]


# --------------------------------------------------------------------------- report


# Rows of the table, in order: (key in the per-seed scores, label).
def _rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("pretrained_llm", "pretrained LLM (text only)"), ("stage1", "after stage 1")]
    rows += [(v, VARIANTS[v].label) for v in data["plan"]["variants"]]
    rows += [(f"merge_{a:g}", f"merge alpha {a:g} (vision only + LLM)") for a in data["plan"]["alphas"]]
    return rows


def _stat(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# Points by which a score counts as moved: above the +-3-point noise of 200-question test sets
# (with a smaller test set, the noise is larger and the reading says so).
MARGIN = 0.05


def summarise(plan: LabPlan, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Every score per seed, the mean and range over seeds per row, and the effects read from them."""
    per_seed: dict[str, dict[str, Any]] = {}
    for r in results:
        flat = dict(r["scores"])
        for a, m in r["merge"].items():
            flat[f"merge_{float(a):g}"] = m
        per_seed[str(r["seed"])] = flat
    data: dict[str, Any] = {
        "plan": asdict(plan),
        "seeds": {str(r["seed"]): r for r in results},
        "summary": {},
        "seconds": round(seconds, 1),
    }
    for key, _ in _rows(data):
        data["summary"][key] = {
            m: _stat([per_seed[s].get(key, {}).get(m) for s in per_seed]) for m in ("language", "vision")
        }
    data["effects"] = read_effects(data["summary"], plan)
    data["reading"] = reading_text(data["effects"], plan, seconds)
    return data


def _mean(summary: dict[str, Any], key: str, modality: str) -> float | None:
    s = summary.get(key, {}).get(modality)
    return s["mean"] if s else None


def read_effects(summary: dict[str, Any], plan: LabPlan) -> dict[str, Any]:
    """Whether E1, E2 and E3 showed, computed from the mean scores (None: not measured in this run)."""
    lang = {k: _mean(summary, k, "language") for k in summary}
    vis = {k: _mean(summary, k, "vision") for k in summary}
    effects: dict[str, Any] = {"margin": MARGIN}
    s1, vo = lang.get("stage1"), lang.get("vision_only")
    if s1 is not None and vo is not None:
        effects["E1"] = {"shown": vo <= s1 - MARGIN, "stage1_language": s1, "vision_only_language": vo, "drop": s1 - vo}
    v12 = "mlan_v12"
    if s1 is not None and lang.get(v12) is not None and vis.get("vision_only") is not None:
        keeps = lang[v12] >= s1 - MARGIN
        matches = vis[v12] >= vis["vision_only"] - MARGIN
        effects["E2"] = {
            "shown": keeps and matches,
            "keeps_language": keeps,
            "matches_vision": matches,
            "language": lang[v12],
            "vision": vis[v12],
            "vision_only_vision": vis["vision_only"],
            "stage1_language": s1,
            "language_only": {"language": lang.get("language_only"), "vision": vis.get("language_only")},
        }
    merges = [(a, lang.get(f"merge_{a:g}"), vis.get(f"merge_{a:g}")) for a in plan.alphas]
    merges = [m for m in merges if m[1] is not None]
    if merges and vo is not None:
        vo_vis = vis.get("vision_only")
        best = max(merges, key=lambda m: (m[1], -m[0]))
        # "Recovers language while keeping most vision": the merge with the best language among those
        # whose vision stays within the margin of the vision-only model's.
        keeps = [m for m in merges if vo_vis is None or (m[2] is not None and m[2] >= vo_vis - MARGIN - 1e-9)]
        pick = max(keeps, key=lambda m: (m[1], -m[0])) if keeps else None
        effects["E3"] = {
            "shown": pick is not None and pick[1] >= vo + MARGIN,
            "best_alpha": best[0],
            "best_language": best[1],
            "best_vision": best[2],
            "alpha": pick[0] if pick else None,
            "language": pick[1] if pick else None,
            "vision": pick[2] if pick else None,
            "vision_only_language": vo,
            "vision_only_vision": vo_vis,
            "meaningful": bool(effects.get("E1", {}).get("shown")),
        }
    return effects


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def reading_text(effects: dict[str, Any], plan: LabPlan, seconds: float) -> str:
    """One paragraph: which effects held in this run, with the numbers that decide it."""
    n = len(plan.seeds)
    over = f"mean over {n} seeds" if n > 1 else "one seed"
    parts = [f"Reading ({over}; a score counts as moved beyond {100 * MARGIN:.0f} points):"]
    e1 = effects.get("E1")
    if e1:
        verdict = "held" if e1["shown"] else "did NOT show"
        parts.append(
            f"E1 {verdict}: vision-only tuning {'lost' if e1['drop'] > 0 else 'changed'} language accuracy "
            f"{_pct(e1['stage1_language'])} -> {_pct(e1['vision_only_language'])} against the stage-1 model."
        )
    e2 = effects.get("E2")
    if e2:
        why = []
        if not e2["keeps_language"]:
            why.append("its language fell more than the margin")
        if not e2["matches_vision"]:
            why.append("its vision stayed below vision-only")
        lo = e2["language_only"]
        parts.append(
            f"E2 {'held' if e2['shown'] else 'did NOT show'}: the 12.5% vision mixture scored "
            f"{_pct(e2['language'])} language (stage 1: {_pct(e2['stage1_language'])}) / {_pct(e2['vision'])} vision "
            f"against vision-only's "
            f"{_pct(e2['vision_only_vision'])} vision" + (f" ({'; '.join(why)})" if why else "")
            + (f"; language-only scored {_pct(lo['language'])} / {_pct(lo['vision'])}." if lo["language"] is not None else ".")
        )  # fmt: skip
    e3 = effects.get("E3")
    if e3:
        if e3["shown"]:
            text = (
                f"E3 held: merging the pretrained LLM back at alpha {e3['alpha']:g} recovered language "
                f"{_pct(e3['vision_only_language'])} -> {_pct(e3['language'])} while vision stayed "
                f"{_pct(e3['vision'])} (vision-only {_pct(e3['vision_only_vision'])}); at alpha {e3['best_alpha']:g} "
                f"language reached {_pct(e3['best_language'])} with vision {_pct(e3['best_vision'])}"
            )
        else:
            text = (
                f"E3 did NOT show: no merge alpha raised language by the margin over vision-only's "
                f"{_pct(e3['vision_only_language'])} while keeping its vision (best language {_pct(e3['best_language'])} "
                f"at alpha {e3['best_alpha']:g}, vision {_pct(e3['best_vision'])})"
            )
        if not e3["meaningful"]:
            text += " (E1 did not show, so there was little language to recover)"
        parts.append(text + ".")
    missing = [e for e in ("E1", "E2", "E3") if e not in effects]
    if missing:
        parts.append(f"Not measured in this run: {', '.join(missing)}.")
    parts.append(f"Wall time {seconds / 60:.1f} min.")
    return " ".join(parts)


def _cell(stat: dict[str, float] | None) -> str:
    if not stat:
        return "-"
    if stat["n"] == 1:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} [{100 * stat['min']:.1f}-{100 * stat['max']:.1f}]"


def _seed_scores(result: dict[str, Any], key: str) -> dict[str, Any]:
    if key.startswith("merge_"):
        return result["merge"].get(key.removeprefix("merge_"), {})
    return result["scores"].get(key, {})


def lab_table(data: dict[str, Any]) -> str:
    """Markdown table: language and vision accuracy (%) per row, mean [min-max] over seeds, per-seed values."""
    seeds = list(data["seeds"])
    head = ["model", "language", "vision"]
    if len(seeds) > 1:
        head += [f"seed {s} (lang / vis)" for s in seeds]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for key, label in _rows(data):
        sm = data["summary"].get(key, {})
        if not sm.get("language") and not sm.get("vision"):
            continue
        cells = [label, _cell(sm.get("language")), _cell(sm.get("vision"))]
        if len(seeds) > 1:
            for s in seeds:
                sc = _seed_scores(data["seeds"][s], key)
                cells.append(f"{_pct(sc.get('language'))} / {_pct(sc.get('vision'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timings_table(data: dict[str, Any]) -> str:
    """Markdown table: seconds per stage and seed (stages in the order they ran)."""
    seeds = list(data["seeds"])
    stages: list[str] = []
    for s in seeds:
        stages.extend(k for k in data["seeds"][s]["timings"] if k not in stages)
    lines = ["| stage | " + " | ".join(f"seed {s}" for s in seeds) + " |", "| --- |" + " ---: |" * len(seeds)]
    for st in stages:
        cells = [f"{data['seeds'][s]['timings'].get(st, 0):.1f}" for s in seeds]
        lines.append(f"| {st} | " + " | ".join(cells) + " |")
    lines.append("| **seed total** | " + " | ".join(f"{data['seeds'][s]['seconds']:.1f}" for s in seeds) + " |")
    return "\n".join(lines)


def plot_lab(data: dict[str, Any], path: Path) -> None:
    """Language against vision accuracy: each variant a point (range over seeds as error bars),
    the merge sweep a curve from the vision-only model (alpha 0) towards the pretrained LLM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = data["summary"]
    fig, ax = plt.subplots(figsize=(7, 5))

    def point(key):
        sm = summary.get(key, {})
        lang, vis = sm.get("language"), sm.get("vision")
        return (lang, vis) if lang and vis else None

    for i, (key, label) in enumerate(_rows(data)):
        if key.startswith("merge_") or key == "pretrained_llm":
            continue
        p = point(key)
        if p is None:
            continue
        lang, vis = p
        ax.errorbar(
            100 * vis["mean"], 100 * lang["mean"],
            xerr=[[100 * (vis["mean"] - vis["min"])], [100 * (vis["max"] - vis["mean"])]],
            yerr=[[100 * (lang["mean"] - lang["min"])], [100 * (lang["max"] - lang["mean"])]],
            fmt="o", ms=8, capsize=3, color=f"C{i % 10}", label=label,
        )  # fmt: skip
    curve = [("vision_only", 0.0)] + [(f"merge_{a:g}", a) for a in data["plan"]["alphas"]]
    pts = [(point(k), a) for k, a in curve if point(k)]
    if len(pts) > 1:
        xs = [100 * p["mean"] for (_, p), _ in pts]
        ys = [100 * lg["mean"] for (lg, _), _ in pts]
        ax.plot(xs, ys, "-", color="0.3", lw=1.5, marker="s", ms=5, label="merge sweep (vision only + LLM)")
        for x, y, (_, a) in zip(xs, ys, pts, strict=True):
            ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    llm = summary.get("pretrained_llm", {}).get("language")
    if llm:
        ax.axhline(100 * llm["mean"], color="0.6", ls=":", lw=1, label="pretrained LLM (language)")
    ax.set_xlabel("vision accuracy (%) — held-out scene questions")
    ax.set_ylabel("language accuracy (%) — held-out P1 tasks")
    n = len(data["seeds"])
    ax.set_title(
        f"mlan lab: language vs vision ({'mean over ' + str(n) + ' seeds, bars: range' if n > 1 else 'one seed'})"
    )
    ax.set_xlim(-2, 110)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
