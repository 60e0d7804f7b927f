"""What one lab run does: the stages and variants it runs, and the shipped configs it fills in.

`LabPlan` holds the sizes, steps, variants and merge alphas; `train_stages` turns it into the
ordered `run_sft` runs of one seed; `resolved` and the `*_changes` helpers template the lab's
shipped configs (`data_mixtures/lab_*.yaml`, `recipes/lab_*.yaml`, `evaluations/lab_*.yaml`) for
one seed's folder. Nothing here trains or evaluates: that is `mlan.lab.run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan.config.base import read_yaml, validate_config
from mlan.config.merge import MergeConfig
from mlan.errors import MlanError
from mlan.io import atomic_write_text
from mlan.paths import resolve_config

# The placeholder prefix of every path in the lab's shipped configs; replaced per seed.
WORLD_PLACEHOLDER = "runs/lab/world"
# One intra-op thread per process. On an idle 2-core machine torch's default (2 threads) is 15-20%
# faster per step, but with other processes on the cores (parallel seeds, other users) one thread was
# 3x faster (OpenMP threads spin while they wait for a core): this degrades least. See
# benchmarks/lab_step.py. The cores are used by running seeds in parallel processes instead.
DEFAULT_THREADS = 1


@dataclass(frozen=True)
class Variant:
    """One stage-2 run: its mixture, learning rate (None: the recipe's) and recipe."""

    name: str
    mixture: str
    label: str
    learning_rate: float | None = None
    recipe: str = "lab_stage2"


VARIANTS = {
    v.name: v
    for v in (
        Variant("vision_only", "lab_vision_only", "vision only"),
        Variant("language_only", "lab_language_only", "language only (MLAN)"),
        Variant("mlan_v12", "lab_mlan_v12", "12.5% vision (MLAN_v)"),
        Variant("mlan_v50", "lab_mlan_v50", "50% vision (MLAN_v)"),
        Variant("vision_only_lr3e-4", "lab_vision_only", "vision only, lr 3e-4", 3e-4),
        Variant("vision_only_lr2e-3", "lab_vision_only", "vision only, lr 2e-3", 2e-3),
        Variant("wings_vision_only", "lab_vision_only", "vision only + Wings", recipe="lab_stage2_wings"),
    )
}
QUICK_VARIANTS = ("vision_only", "language_only", "mlan_v12")
FULL_VARIANTS = tuple(VARIANTS)
ALPHAS = (0.25, 0.5, 0.75, 1.0)
# The variants the effects are read from: the pretrained LLM is merged back into the vision-only
# model (E1, E3); E2 compares the 12.5% vision mixture with it and quotes language-only beside.
MERGE_BASE = "vision_only"
LITTLE_VISION = "mlan_v12"
LANGUAGE_ONLY = "language_only"
WINGS = "wings_vision_only"
# Labels of the two models every seed scores before stage 2.
PRETRAINED_LLM, STAGE1 = "pretrained_llm", "stage1"
BASE_LABELS = {PRETRAINED_LLM: "pretrained LLM (text only)", STAGE1: "after stage 1"}


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
    jobs: int = 1  # processes at a time: seeds in parallel, then a seed's stage-2 variants with the rest
    threads: int = DEFAULT_THREADS
    # Threads for the stages the only seed runs with the machine to itself (pretraining, stage 1), whose
    # batches are then prepared in the training process (no data worker): on an idle 2-core machine
    # 6% (pretraining) and 12% (stage 1) faster per step than one thread + one worker
    # (benchmarks/lab_step.py). None: `threads`.
    solo_threads: int | None = None

    @property
    def merges(self) -> bool:
        """Whether the merge sweep runs: it needs the vision-only model and at least one alpha."""
        return MERGE_BASE in self.variants and bool(self.alphas)

    def check(self) -> None:
        """One-line errors for what the lab cannot run, before anything is written."""
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise MlanError(f"variant {unknown[0]!r}: unknown (known: {', '.join(VARIANTS)})")
        if not self.seeds:
            raise MlanError("--seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise MlanError(f"--seeds {','.join(map(str, self.seeds))}: a seed appears twice")


def quick_plan(seeds: list[int] | None = None) -> LabPlan:
    """One seed, the essential variants (vision-only, language-only, 12.5% vision) and the merge sweep;
    pretraining and stage 1 use every core, then the variants run in parallel processes."""
    seeds, cores = list(seeds or [0]), os.cpu_count() or 1
    solo = cores if len(seeds) == 1 else None
    # Every variant at once, as the full lab's seeds (see full_plan): 3 one-thread processes on 2 cores
    # finish together, where 2 + 1 leave a core idle during the last.
    jobs = min(max(len(seeds), len(QUICK_VARIANTS)), 2 * cores)
    return LabPlan(seeds=seeds, variants=list(QUICK_VARIANTS), jobs=jobs, solo_threads=solo)


def full_plan(seeds: list[int] | None = None) -> LabPlan:
    """Three seeds, every variant (the vision-only run at three learning rates), the merge sweep."""
    seeds = list(seeds or [0, 1, 2])
    # All seeds at once: with one thread each, 3 processes on 2 cores finish together, where 2 + 1
    # would leave a core idle during the last seed.
    return LabPlan(seeds=seeds, variants=list(FULL_VARIANTS), jobs=min(len(seeds), 2 * (os.cpu_count() or 1)))


@dataclass(frozen=True)
class TrainStage:
    """One `run_sft` of a seed: the model it writes (`name`), from which model, on which mixture.

    `text_only`: the stage trains the language model alone, and what is scored is the LLM extracted
    from it (`pretrained_llm`, language questions only) rather than the trained model itself.
    """

    name: str
    recipe: str
    mixture: str
    start: str  # "init" (the untrained tiny LLaVA) or an earlier stage's name
    rows: int | None
    steps: int | None
    learning_rate: float | None = None
    text_only: bool = False

    @property
    def variant(self) -> bool:
        """A stage-2 variant (from the stage-1 model): variants may run side by side; the stages before
        them run one at a time."""
        return self.start == STAGE1

    @property
    def scored(self) -> str:
        """The name its scores go under."""
        return PRETRAINED_LLM if self.text_only else self.name


def train_stages(plan: LabPlan) -> list[TrainStage]:
    """Every training run of one seed, in order: LLM pretraining, stage 1, then each stage-2 variant
    (all from the same stage-1 model, every mixture the same size)."""
    stages = [
        TrainStage("pretrain", "lab_pretrain", "lab_pretrain", "init", plan.pretrain_rows, plan.pretrain_steps,
                   text_only=True),
        TrainStage(STAGE1, "lab_stage1", "lab_captions", "pretrain", plan.stage1_rows, plan.stage1_steps),
    ]  # fmt: skip
    for name in plan.variants:
        v = VARIANTS[name]
        stages.append(
            TrainStage(name, v.recipe, v.mixture, STAGE1, plan.stage2_rows, plan.stage2_steps, v.learning_rate)
        )
    return stages


# --------------------------------------------------------------------------- config templating


def relocate(value: Any, world: Path) -> Any:
    """Replace the world placeholder in every string of a config tree."""
    if isinstance(value, str) and value.startswith(WORLD_PLACEHOLDER):
        return str(world) + value[len(WORLD_PLACEHOLDER) :]
    if isinstance(value, dict):
        return {k: relocate(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, world) for v in value]
    return value


def resolved(kind: str, name: str, model, world: Path, configs: Path, changes: dict[str, Any], save_as: str):
    """A shipped lab config with the seed's paths and `changes` (dotted keys) applied, validated and
    saved as `configs/<save_as>.yaml`; returns (config, path)."""
    src = resolve_config(name, kind)
    data = relocate(read_yaml(src), world)
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    config = validate_config(data, model, source=f"{src} (lab: {save_as})")
    path = configs / f"{save_as}.yaml"
    atomic_write_text(path, config_yaml(config))
    return config, path


def config_yaml(config) -> str:
    """A validated config as the YAML the ordinary commands read back."""
    import yaml

    # Only the fields the config set (the shipped file and the lab's changes): a default written out
    # would count as set when read back, and some are refused when set (a Wings recipe's
    # training.learning_rate, which its per-group rates replace).
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True, exclude_unset=True), sort_keys=False)


def mixture_changes(seed: int, tokenizer_dir: Path, rows: int | None = None, shipped=None) -> dict[str, Any]:
    """The seed's changes to a shipped mixture; with `rows`, its size, keeping the language:vision
    proportion of `shipped` (the shipped mixture's modality split)."""
    changes: dict[str, Any] = {"seed": seed, "tokenizer": str(tokenizer_dir)}
    if rows is not None:
        vision = round(rows * shipped.vision / (shipped.language + shipped.vision))
        changes["modality_split"] = {"language": rows - vision, "vision": vision}
    return changes


def recipe_changes(stage: TrainStage, plan: LabPlan, seed: int, root: Path, model: Path, mixture: Path):
    """The seed's changes to a shipped recipe: paths, seed, and the plan's steps, rate and batch size."""
    changes: dict[str, Any] = {
        "name": stage.name,
        "model.path": str(model),
        "data.mixture": str(mixture),
        "output.dir": str(root / "models" / stage.name),
        "training.seed": seed,
    }
    if stage.steps is not None:
        changes["training.max_steps"] = stage.steps
    if stage.learning_rate is not None:
        changes["training.learning_rate"] = stage.learning_rate
    if plan.batch_size is not None:
        changes["training.per_device_train_batch_size"] = plan.batch_size
    if plan.solo_threads is not None and not stage.variant:  # a stage the seed runs alone
        changes["training.dataloader_num_workers"] = 0
        changes["training.extra"] = {}  # no persistent workers without workers
    return changes


def merge_config(plan: LabPlan, root: Path, llm: Path, suites: list[Path]):
    """Task arithmetic of the pretrained LLM into the vision-only model over the plan's alphas,
    every point kept and scored on the lab's suites."""
    return MergeConfig(
        multimodal=str(root / "models" / MERGE_BASE),
        original=str(llm),
        method="task_arithmetic",
        alpha=list(plan.alphas) if len(plan.alphas) > 1 else plan.alphas[0],
        out=str(root / "merge"),
        sweep={"suites": [str(p) for p in suites], "criterion": "mean", "keep_merged": True, "device": "cpu"},
    )
