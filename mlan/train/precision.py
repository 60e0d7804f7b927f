"""Where the master weights live, and how much memory a plan needs per device before any weights load.

A model loaded in bf16 and trained with bf16 on one process or under DDP is trained in pure bf16 by
the Trainer: AdamW's states and the weights are bf16 with no fp32 copy, and at lr 2e-5 most updates
are smaller than half a bf16 step of the weight and round away (on the tiny LLaVA, 6 steps changed
20.4% of the language model's weights instead of the fp32 run's 45.7%: tests/test_sft_engines.py). LLaVA and MLAN trained through DeepSpeed's bf16
optimizer, which applies every update to an fp32 master copy. So mlan chooses, and says:

- DeepSpeed / FSDP2: the engine's fp32 masters (DeepSpeed's bf16 optimizer; accelerate's FSDP2 upcasts the
  trainable parameters to fp32 and computes in bf16);
- one process / DDP, `master_weights: auto|fp32`: the trainable parameters upcast to fp32 after loading,
  the forward under bf16/fp16 autocast; frozen ones stay in the load dtype;
- `kahan`: 16-bit trainable weights, torch-optimi's AdamW with Kahan summation (a maintained package: the
  compensation buffer keeps the low bits each bf16 update would lose);
- `pure_bf16`: only when named, with one warning line.

The memory estimate counts weights, gradients and optimizer states per device (not activations, which
depend on batch and length and which gradient checkpointing keeps small), from a weightless copy.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from mlan.errors import MlanError
from mlan.train.engine import Engine

log = logging.getLogger(__name__)

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1 << 30
# A plan whose states alone take more than this share of a device cannot also hold activations.
FIT_SHARE = 0.9


@dataclass(frozen=True)
class PrecisionPlan:
    """compute: the forward's precision (bf16 / fp16 autocast, or fp32); load_dtype: what the weights load
    in; master: where updates are applied (`fp32`, `fp32 (engine)`, `kahan`, `pure_bf16`); upcast: whether
    mlan casts the trainable parameters to fp32 after loading; optimizer: `optimi_kahan` or None (the
    Trainer's own AdamW)."""

    compute: str
    load_dtype: str
    master: str
    upcast: bool = False
    optimizer: str | None = None

    def describe(self, engine: Engine) -> str:
        """One line for the summary and the model card."""
        sixteen = self.load_dtype != "float32"
        if self.master == "fp32 (engine)":
            where = f"fp32 master weights held by {engine.label()}"
        elif self.master == "kahan":
            where = f"{self.load_dtype} weights, AdamW with Kahan summation (torch-optimi)"
        elif self.master == "pure_bf16":
            where = f"pure {self.load_dtype}: weights and AdamW states in 16 bits, small updates round away"
        elif self.upcast:
            where = f"fp32 trainable parameters (frozen ones stay {self.load_dtype})"
        else:
            where = "fp32 weights"
        compute = f"{self.compute} autocast" if self.compute != "fp32" else "fp32 compute"
        return f"{where}, {compute}" + (f", loaded in {self.load_dtype}" if sixteen else "")

    def to_json(self, engine: Engine) -> dict[str, Any]:
        return {**asdict(self), "description": self.describe(engine)}


def load_dtype(model_dtype: str, config) -> str:
    """The dtype the weights load in: the recipe's, or the checkpoint's own for `auto`."""
    if model_dtype != "auto":
        return model_dtype
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return name if name in BYTES else "float32"


def plan_precision(master_weights: str, compute: str, dtype: str, engine: Engine) -> PrecisionPlan:
    """The plan for this recipe and engine; a plan that cannot work is one line naming the field."""
    if compute == "fp32" and dtype != "float32":
        # No autocast would bridge 16-bit weights and fp32 compute: the whole model loads in fp32.
        log.info("training.precision fp32: the weights load in float32 (model.dtype %s)", dtype)
        dtype = "float32"
    if master_weights in ("kahan", "pure_bf16"):
        if engine.sharded:
            raise MlanError(
                f"training.master_weights {master_weights}: {engine.label()} keeps fp32 master weights itself "
                "(leave master_weights auto)"
            )
        if dtype == "float32":
            raise MlanError(
                f"training.master_weights {master_weights}: the weights load in float32, so there is nothing to "
                "save (set model.dtype bfloat16)"
            )
    if engine.sharded:
        return PrecisionPlan(compute, dtype, "fp32 (engine)")
    if master_weights == "kahan":
        import importlib.util

        if importlib.util.find_spec("optimi") is None:
            raise MlanError("training.master_weights kahan: torch-optimi is not installed (pip install 'mlan[optimi]')")
        return PrecisionPlan(compute, dtype, "kahan", optimizer="optimi_kahan")
    if master_weights == "pure_bf16":
        log.warning(
            "training.master_weights pure_bf16: weights and AdamW states in %s with no fp32 copy; at small learning "
            "rates most updates round away (master_weights auto keeps them in fp32)",
            dtype,
        )
        return PrecisionPlan(compute, dtype, "pure_bf16")
    return PrecisionPlan(compute, dtype, "fp32", upcast=dtype != "float32")


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of the model to train: trainable and frozen, with the language model's frozen linear
    weights apart (4-bit under QLoRA)."""

    trainable: int
    frozen: int
    quantized: int = 0  # of `frozen`: stored in 4 bits (QLoRA)


def estimate_memory(counts: ParameterCounts, plan: PrecisionPlan, engine: Engine, shards: int) -> dict[str, float]:
    """Bytes per device for weights, gradients and optimizer states under this plan and engine."""
    b = BYTES[plan.load_dtype]
    t, f, q = counts.trainable, counts.frozen - counts.quantized, counts.quantized
    frozen_bytes = f * b + q * 0.5
    n = max(shards, 1)
    if engine.deepspeed:
        # DeepSpeed keeps 16-bit (or fp32) working weights and gradients, and per trainable parameter an fp32
        # master copy and AdamW's two fp32 moments (12 bytes) in its optimizer partition.
        optimizer = 0.0 if engine.offload else t * 12 / n
        if engine.zero_stage == 3:
            weights = 0.0 if engine.offload else (t * b + frozen_bytes) / n
            grads = t * b / n
        else:
            weights, grads = t * b + frozen_bytes, t * b / n
    elif engine.fsdp:
        # accelerate's FSDP2 upcasts the trainable parameters to fp32; each process holds 1/n of everything.
        weights, grads, optimizer = (t * 4 + frozen_bytes) / n, t * 4 / n, t * 8 / n
    elif plan.master == "kahan":
        weights, grads, optimizer = t * b + frozen_bytes, t * b, t * 3 * b  # two moments + the compensation
    elif plan.master == "pure_bf16":
        weights, grads, optimizer = t * b + frozen_bytes, t * b, t * 2 * b
    else:
        weights, grads, optimizer = t * 4 + frozen_bytes, t * 4, t * 8
    return {"weights": weights, "gradients": grads, "optimizer": optimizer, "total": weights + grads + optimizer}


def device_memory(local_index: int) -> int | None:
    """Bytes of memory of this process's GPU, or None on a CPU (no limit is checked there)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(local_index).total_memory)


def human_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def what_would_fit(counts: ParameterCounts, plan: PrecisionPlan, capacity: int) -> str:
    """The smallest DeepSpeed ZeRO-3 run that would hold these states, as a command to type."""
    for offload in (False, True):
        zero3 = Engine("deepspeed", 3, offload)
        for gpus in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            need = estimate_memory(counts, PrecisionPlan(plan.compute, plan.load_dtype, "fp32 (engine)"), zero3, gpus)
            if need["total"] <= FIT_SHARE * capacity:
                config = "deepspeed_zero3_offload" if offload else "deepspeed_zero3"
                return (
                    f"DeepSpeed ZeRO-3{' with CPU offload' if offload else ''} over {gpus} GPU(s) would need "
                    f"{human_bytes(need['total'])} each (accelerate launch --config_file recipes/accelerate/{config}.yaml "
                    f"--num_processes {gpus} -m mlan sft ...)"
                )
    return "no ZeRO-3 plan of up to 512 GPUs holds it; use LoRA or QLoRA (train.language_model)"


def check_fits(counts: ParameterCounts, plan: PrecisionPlan, engine: Engine, shards: int, capacity: int | None) -> None:
    """Refuse, in one line naming what would fit, a plan whose states alone exceed the device."""
    if capacity is None:
        return
    need = estimate_memory(counts, plan, engine, shards)
    if need["total"] <= FIT_SHARE * capacity:
        return
    raise MlanError(
        f"training: {engine.label()} with {plan.describe(engine)} needs about {human_bytes(need['total'])} per GPU for "
        f"weights, gradients and optimizer states ({counts.trainable / 1e9:.2f}B trainable parameters), more than "
        f"{FIT_SHARE:.0%} of this GPU's {human_bytes(capacity)}; {what_would_fit(counts, plan, capacity)}"
    )


def resolve_precision(precision: str) -> tuple[str, bool]:
    """(precision actually used, whether a GPU is used). `auto` follows the launcher's `mixed_precision`
    when it names one. The recipe's precision is then the one the Trainer uses: TrainingArguments would
    otherwise take an accelerate config's `mixed_precision: bf16` for a recipe that says fp32 (bf16 autocast
    said nowhere), so the launcher's setting is replaced in this process, with one line when they differ."""
    import os

    import torch

    cuda = torch.cuda.is_available()
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if precision == "auto":
        if launcher in ("bf16", "fp16"):
            precision = launcher
        else:
            precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise MlanError("training.precision fp16: needs a GPU (use bf16 or fp32 on a CPU)")
    wanted = "no" if precision == "fp32" else precision
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        if launcher != wanted:
            log.warning("the launcher's mixed_precision %s is replaced by training.precision %s", launcher, precision)
        os.environ["ACCELERATE_MIXED_PRECISION"] = wanted
    return precision, cuda


def count_parameters(recipe, info) -> ParameterCounts:
    """Trainable and frozen parameters of the model as the recipe trains it, on a weightless copy (for the
    memory estimate): the recipe's freeze, LoRA adapters beside the frozen model (the components trained
    beside them counted twice, PEFT keeps the original), or Wings' learners as the stage trains them."""
    import torch
    from accelerate import init_empty_weights

    from mlan.train.freeze import apply_freeze, check_lora_targets, component_of, parameter_report

    with init_empty_weights():
        meta = info.model_class._from_config(info.config)
    tr = recipe.train
    if recipe.wings is not None:
        from mlan.wings import add_wings, wings_parameter_groups

        config = recipe.wings.learner_config()
        with init_empty_weights():
            add_wings(meta, config)
        wings_parameter_groups(meta, recipe.wings.stage, config)
    elif tr.language_model in ("lora", "qlora"):
        modules = dict(meta.named_modules())
        adapters = sum(
            tr.lora.r * (modules[n].in_features + modules[n].out_features)
            for n in check_lora_targets(meta, tr.lora.target_modules)
        )
        beside = {"projector": tr.projector, "vision_tower": tr.vision_tower}
        twice = sum(p.numel() for n, p in meta.named_parameters() if beside.get(component_of(n)))
        total = sum(p.numel() for p in meta.parameters())
        quantized = 0
        if tr.language_model == "qlora":
            quantized = sum(
                m.weight.numel()
                for n, m in meta.named_modules()
                if isinstance(m, torch.nn.Linear) and component_of(n + ".weight") == "language_model"
            )
        return ParameterCounts(adapters + twice, total, quantized)
    else:
        apply_freeze(meta, tr)
    counted = parameter_report(meta)["all"]
    return ParameterCounts(counted["trainable"], counted["total"] - counted["trainable"])
