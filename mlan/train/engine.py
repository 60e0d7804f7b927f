"""Which engine spreads the model over the processes, and proof that it really did.

The engine comes from the recipe (`training.engine`) or, with `auto`, from the launcher (an accelerate
config with `distributed_type: DEEPSPEED` or `FSDP` sets `ACCELERATE_USE_DEEPSPEED` / `ACCELERATE_USE_FSDP`
in every process). Whatever the launcher (`torchrun`, the `deepspeed` launcher, `accelerate launch`),
mlan hands the Trainer the engine explicitly: a DeepSpeed JSON as `deepspeed=` (LLaVA's and MLAN's own
route: `deepspeed ... --deepspeed scripts/zero3.json`, wang-research-lab/mlan scripts/train/finetune.sh:25-26),
or `fsdp=` with an FSDP2 `fsdp_config` that names the model's own layer classes.

Several engines fall back silently and still exit 0 (accelerate's simple launcher starts one process
for `--cpu --num_processes 2`; FSDP on a CPU becomes plain DDP; ZeRO under `ACCELERATE_USE_CPU` becomes
DDP): `check_processes` before any weights load and `check_engaged` once the Trainer exists stop such
a run in one line.

Light to import (accelerate and torch inside the functions): the pre-flight checks use it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan.config.recipe import TrainingSection
from mlan.errors import MlanError, first_line
from mlan.paths import PACKAGE_DIR

# mlan's DeepSpeed configs per engine: recipes/deepspeed/<file> (LLaVA's scripts/zero2.json, zero3.json
# and zero3_offload.json, which MLAN's finetune.sh passes; batch, accumulation, clipping, precision "auto").
DEEPSPEED_FILES = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}
FSDP_HINT = "FSDP2 needs GPUs: accelerate shards with FSDP only on GPUs, and on a CPU trains plain DDP instead"


@dataclass(frozen=True)
class Engine:
    """The engine of a run: `single` (one process), `ddp`, `deepspeed` (with its ZeRO stage) or `fsdp2`."""

    name: str
    zero_stage: int | None = None
    offload: bool = False
    source: str = "default"  # "recipe" (training.engine) | "launcher" (an accelerate config) | "default"
    config_file: str | None = None  # the DeepSpeed JSON used
    # Its contents, read once when the engine is resolved: what the Trainer is handed (`deepspeed=`).
    deepspeed_config: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def deepspeed(self) -> bool:
        return self.name == "deepspeed"

    @property
    def fsdp(self) -> bool:
        return self.name == "fsdp2"

    @property
    def sharded(self) -> bool:
        """Whether the engine keeps fp32 master weights of its own and splits the model over processes."""
        return self.deepspeed or self.fsdp

    def label(self) -> str:
        if self.deepspeed:
            return f"DeepSpeed ZeRO-{self.zero_stage}" + (" (offload to CPU)" if self.offload else "")
        return {"single": "one process", "ddp": "DDP", "fsdp2": "FSDP2"}[self.name]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label(),
            "zero_stage": self.zero_stage,
            "offload": self.offload,
            "source": self.source,
            "config_file": self.config_file,
        }


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() in ("1", "true", "yes")


def launcher_engine(env: Mapping[str, str]) -> str | None:
    """The engine an accelerate config asked for (`zero2`, `zero3`, `zero3_offload`, `fsdp1`, `fsdp2`), or None."""
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        offload = any(
            env.get(k, "none").lower() not in ("none", "")
            for k in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")
        )
        if stage == "3":
            return "zero3_offload" if offload else "zero3"
        if stage == "2":
            return "zero2"
        # A config file names its stage itself (read with the file).
        return "deepspeed_file" if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") else f"zero{stage or '?'}"
    if _flag(env, "ACCELERATE_USE_FSDP"):
        return "fsdp2" if env.get("FSDP_VERSION", "1") == "2" else "fsdp1"
    return None


def resolve_engine(training: TrainingSection, processes: int, env: Mapping[str, str] | None = None) -> Engine:
    """The engine this run uses: the recipe's, else the launcher's, else DDP (one process: none); a
    recipe and a launcher that disagree, or an engine mlan does not run, are one line each."""
    env = os.environ if env is None else env
    asked, launched = training.engine, launcher_engine(env)
    if launched == "fsdp1":
        raise MlanError(
            "the accelerate config asks for FSDP version 1, which flattens parameters (frozen towers and Wings' "
            "groups need per-parameter sharding): set fsdp_version: 2 (recipes/accelerate/fsdp.yaml)"
        )
    if launched in ("zero0", "zero1", "zero?"):
        raise MlanError(
            f"the accelerate config asks for DeepSpeed ZeRO stage {launched[4:]}: mlan runs stages 2 and 3 "
            "(recipes/accelerate/deepspeed_zero2.yaml, deepspeed_zero3.yaml)"
        )
    file_from_launcher = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") if launched else None
    if training.deepspeed_config and not (asked.startswith("zero") or (asked == "auto" and launched)):
        raise MlanError(
            f"training.deepspeed_config {training.deepspeed_config}: used only by a DeepSpeed engine "
            f"(training.engine is {asked}{'' if launched else ' and the launcher asks for none'}: set zero2 or zero3)"
        )
    if asked == "auto":
        if launched is None:
            return Engine("ddp" if processes > 1 else "single")
        name, source = launched, "launcher"
    else:
        if launched is not None and launched != "deepspeed_file" and launched != asked:
            raise MlanError(
                f"training.engine {asked}, but the launcher's accelerate config asks for {launched}: "
                f"set one of them (training.engine auto follows the launcher)"
            )
        if launched == "deepspeed_file" and not asked.startswith("zero"):
            raise MlanError(f"training.engine {asked}, but the launcher's accelerate config asks for DeepSpeed")
        if asked == "ddp":
            return Engine("ddp" if processes > 1 else "single", source="recipe")
        name, source = asked, "recipe"
    if name == "fsdp2":
        return Engine("fsdp2", source=source)
    if importlib.util.find_spec("deepspeed") is None:
        raise MlanError(
            f"training.engine {name if asked != 'auto' else 'auto'}: DeepSpeed is not installed "
            "(pip install 'mlan[deepspeed]')"
        )
    path = training.deepspeed_config or file_from_launcher
    config = _read_deepspeed_json(path, name)
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    if stage not in (2, 3):
        raise MlanError(f"{path or name}: zero_optimization.stage {stage}: mlan runs DeepSpeed ZeRO stages 2 and 3")
    if name.startswith("zero") and name != "deepspeed_file" and int(name[4]) != stage:
        raise MlanError(f"{path}: zero_optimization.stage {stage}, but training.engine is {name}")
    zero = config["zero_optimization"]
    if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        # Without it the Trainer's final save writes no weights, only a warning and DeepSpeed's shards.
        raise MlanError(
            f"{path or name}: zero_optimization.stage3_gather_16bit_weights_on_model_save must be true "
            "(otherwise the trained model is saved without weights)"
        )
    offload = any(
        (zero.get(k) or {}).get("device", "none") not in ("none", None) for k in ("offload_optimizer", "offload_param")
    )
    return Engine("deepspeed", stage, offload, source, str(_deepspeed_path(path, name)), config)


def _deepspeed_path(path: str | None, name: str) -> Path:
    if path:
        return Path(path).expanduser()
    return shipped_deepspeed_dir() / DEEPSPEED_FILES.get(name, "zero3.json")


def shipped_deepspeed_dir() -> Path:
    """recipes/deepspeed/ of the checkout, or the wheel's copy (pyproject's force-include of recipes/)."""
    checkout = PACKAGE_DIR.parent / "recipes" / "deepspeed"
    return checkout if checkout.is_dir() else PACKAGE_DIR / "_shipped" / "recipes" / "deepspeed"


def _read_deepspeed_json(path: str | None, name: str) -> dict[str, Any]:
    file = _deepspeed_path(path, name)
    where = "training.deepspeed_config" if path else "DeepSpeed config"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise MlanError(f"{where} {file}: cannot read it ({e.strerror or first_line(e)})") from None
    except ValueError as e:
        raise MlanError(f"{where} {file}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization"), dict):
        raise MlanError(f"{where} {file}: no zero_optimization section")
    return config


def layer_classes(model_class, config) -> list[str]:
    """The classes FSDP2 wraps one by one: the repeated blocks of the model (decoder layers, vision
    encoder layers), found as the elements of its ModuleLists that transformers marks as never split
    (`_no_split_modules`), on a weightless copy."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        meta = model_class._from_config(config)
    unsplit = set(meta._no_split_modules or ())
    found = {
        type(m[0]).__name__
        for _, m in meta.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) and type(m[0]).__name__ in unsplit
    }
    return sorted(found)


def fsdp_args(model_class, config, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Trainer's FSDP2 arguments: every repeated block sharded on its own, the parameters resharded
    after the forward, sharded checkpoints (resumable on the same process count); the final save
    switches to a full state dict (mlan.train.sft). A launcher's own layer list wins."""
    env = os.environ if env is None else env
    wrap = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
    classes = [c.strip() for c in wrap.split(",") if c.strip()] if wrap else layer_classes(model_class, config)
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            # transformers 5 reads "version"; "fsdp_version" would be ignored silently (distributed.md).
            "version": 2,
            "transformer_layer_cls_to_wrap": classes,
            "reshard_after_forward": True,
            "state_dict_type": "SHARDED_STATE_DICT",
        },
    }


def engine_args(engine: Engine, model_class, config) -> dict[str, Any]:
    """The SFTConfig fields that start the engine."""
    if engine.deepspeed:
        # The launcher's DeepSpeed fields (zero_stage, offload, ...) are now expressed in the JSON handed to
        # the Trainer; accelerate refuses a JSON beside config fields it would ignore, so they are dropped.
        os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
        return {"deepspeed": engine.deepspeed_config}
    if engine.fsdp:
        return fsdp_args(model_class, config)
    return {}


def start_deepspeed_comm(engine: Engine, state) -> None:
    """DeepSpeed's communication layer over the process group the Trainer's arguments started, before the
    model loads: ZeRO-3 creates the parameters partitioned (`zero.Init`), which asks DeepSpeed for the world
    size. On a GPU the Trainer's arguments start it; on a CPU (`use_cpu`) nothing does, and DeepSpeed
    would count one process and refuse the batch size."""
    if not engine.deepspeed or state.num_processes == 1:
        return
    import contextlib
    import io

    from deepspeed import comm

    from mlan.console import VERBOSE, verbosity

    if not comm.is_initialized():
        # On a CPU DeepSpeed compiles (once, then loads) its shared-memory collectives and prints that it did
        # on stdout, which is for results: kept for -v.
        quiet = contextlib.redirect_stdout(io.StringIO()) if verbosity() < VERBOSE else contextlib.nullcontext()
        with quiet:
            comm.init_distributed(dist_backend=state.backend, auto_mpi_discovery=False)


def launched_processes(env: Mapping[str, str] | None = None) -> int | None:
    """How many processes the launcher started, as it tells them (WORLD_SIZE), or None when it did not say."""
    env = os.environ if env is None else env
    value = env.get("WORLD_SIZE")
    return int(value) if value and value.isdigit() else None


def check_processes(state, env: Mapping[str, str] | None = None) -> None:
    """Stop a run that has fewer processes than its launcher meant to start.

    accelerate's simple launcher (`accelerate launch --cpu --num_processes 2`) starts ONE process and
    tells it nothing but a rendezvous address; a launcher's WORLD_SIZE that this process group does not
    have means the processes did not join one run."""
    env = os.environ if env is None else env
    world = launched_processes(env)
    if world is not None and world != state.num_processes:
        raise MlanError(
            f"the launcher started {world} processes but they did not join one run ({state.num_processes} "
            "process(es) here); on a CPU launch with torchrun or --config_file recipes/accelerate/cpu_ddp.yaml"
        )
    simple_cpu_launch = _flag(env, "ACCELERATE_USE_CPU") and env.get("MASTER_ADDR") and world is None
    if simple_cpu_launch and state.num_processes == 1:
        raise MlanError(
            "accelerate launch --cpu with several processes starts only one (accelerate's simple launcher): "
            "use --config_file recipes/accelerate/cpu_ddp.yaml (torchrun, gloo) for several CPU processes"
        )


def check_engine(engine: Engine, state, cuda: bool, *, qlora: bool = False) -> None:
    """What the engine cannot do with this recipe or on this machine, in one line before any weights load."""
    from accelerate.utils import DistributedType

    if engine.fsdp and state.distributed_type not in (DistributedType.MULTI_GPU, DistributedType.FSDP):
        if not cuda:
            raise MlanError(f"training.engine fsdp2: {FSDP_HINT}; on a CPU use training.engine zero3 (DeepSpeed)")
        raise MlanError("training.engine fsdp2: start the run with torchrun or accelerate launch (FSDP needs them)")
    if engine.sharded and qlora:
        raise MlanError(
            f"train.language_model qlora: not with {engine.label()} (its 4-bit weights stay whole on every GPU); "
            "use training.engine ddp, or lora with zero3"
        )


def check_engaged(trainer, engine: Engine) -> None:
    """After the Trainer is built, before training: the engine asked for is the one accelerate set up."""
    from accelerate.utils import DistributedType

    got = trainer.accelerator.distributed_type
    if engine.deepspeed and got != DistributedType.DEEPSPEED:
        raise MlanError(f"{engine.label()} was asked for, but accelerate set up {got.value}: nothing would be sharded")
    if engine.fsdp and got != DistributedType.FSDP:
        raise MlanError(f"training.engine fsdp2: accelerate set up {got.value}, not FSDP ({FSDP_HINT})")
    if not engine.sharded and got in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise MlanError(f"accelerate set up {got.value}, but mlan planned {engine.label()}: set training.engine")
