"""The SFT recipe (`recipes/*.yaml`): which model, what is trained, on which mixture, how.

Field names in `training` follow transformers/TRL (`learning_rate`, `per_device_train_batch_size`,
...) so that a user who knows `SFTConfig` recognises them; anything not listed here goes through
`training.extra` to `SFTConfig` unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlan.config.base import StrictModel
from mlan.config.wings import WingsConfig
from mlan.errors import MlanError

# Experiment trackers the Trainer reports to (transformers' integrations; kept in step with
# transformers.integrations.integration_utils.INTEGRATION_TO_CALLBACK by a test).
TRACKERS = (
    "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte",
    "kubeflow", "mlflow", "neptune", "swanlab", "tensorboard", "trackio", "wandb",
)  # fmt: skip


def check_report_to(report_to: str | list[str]) -> None:
    """Each tracker in `training.report_to` is installed (the Trainer would fail only once the model is loaded)."""
    from transformers.integrations import integration_utils

    # transformers' availability check and pip package per tracker, where the names differ from the tracker's.
    checks = {"azure_ml": "azureml", "comet_ml": "comet", "flyte": "flytekit"}
    packages = {"azure_ml": "azureml-core", "flyte": "flytekit"}
    for name in [report_to] if isinstance(report_to, str) else report_to:
        available = getattr(integration_utils, f"is_{checks.get(name, name)}_available", None)
        if name not in ("none", "all") and available is not None and not available():
            raise MlanError(
                f"training.report_to {name}: not installed in this environment (pip install {packages.get(name, name)})"
            )


# The linear layers of a Llama/Mistral/Vicuna decoder; LoRA wraps them inside the language model only.
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelSection(StrictModel):
    """The LLaVA-style model to start from (for MLAN: a stage-1 checkpoint whose projector is aligned)."""

    path: str
    """Local folder or hub id of a LlavaForConditionalGeneration checkpoint with its processor."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype the weights are loaded in; `auto` keeps the checkpoint's own dtype."""
    attn_implementation: str | None = None
    """Attention kernel passed to from_pretrained (`sdpa`, `eager`, `flash_attention_2`); None: transformers' default."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `path` is a hub id."""


class LoraSection(StrictModel):
    """LoRA adapter settings, used when `train.language_model` is `lora` or `qlora`."""

    r: int = Field(64, gt=0)
    """Rank of the low-rank update."""
    alpha: int = Field(16, gt=0)
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), min_length=1)
    """Names of linear layers to adapt; matched only inside the language model, never the vision tower or projector."""


class TrainSection(StrictModel):
    """Which parts of the model are trained."""

    language_model: Literal["full", "lora", "qlora", "frozen"] = "full"
    """full: every LLM weight (+ lm_head); lora: adapters on a frozen LLM; qlora: adapters on a 4-bit LLM; frozen."""
    projector: bool = True
    """Train the multimodal projector (MLAN stage 2 does)."""
    vision_tower: bool = False
    """Train the vision encoder (MLAN keeps it frozen; text-only batches would leave it without gradients)."""
    lora: LoraSection = Field(default_factory=LoraSection)
    """Adapter settings for `lora` / `qlora`."""

    @model_validator(mode="after")
    def _something_trains(self) -> TrainSection:
        if self.language_model == "frozen" and not self.projector and not self.vision_tower:
            raise ValueError("nothing is trained: set language_model, projector or vision_tower")
        return self


class DataSection(StrictModel):
    """The training mixture: a folder written by `mlan build-mixture`, or its spec to build first."""

    mixture: str | None = None
    """A built mixture folder (DatasetDict with train/validation + manifest.json)."""
    spec: str | None = None
    """A mixture spec (`data_mixtures/*.yaml` path or shipped name), built first unless `build_dir` holds it already."""
    build_dir: str | None = None
    """Where `spec` is built; default `runs/mixtures/<mixture name>` (where `mlan build-mixture` writes it)."""
    eval_at_end: bool = True
    """Compute the loss on the mixture's validation split after training (reported in the model card)."""
    image_aspect_ratio: Literal["pad", "original"] = "original"
    """LLaVA's `image_aspect_ratio`: `pad` pads each image to a square with the processor's mean colour
    before the processor resizes and crops it (MLAN's stage 2 trains so); `original` hands it over as it is
    (LLaVA's stage-1 default). Evaluate with the same setting (the suite's `image_aspect_ratio`)."""

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.mixture is None) == (self.spec is None):
            raise ValueError("set exactly one of mixture (a built folder) or spec (a mixture YAML to build)")
        if self.build_dir is not None and self.spec is None:
            raise ValueError("build_dir only applies with spec")
        return self


def _on_off(value: Any, on: str = "on") -> Any:
    """YAML 1.1 reads a bare on/off (`packing: off`, `-o training.padding_free=on`) as a boolean."""
    return {True: on, False: "off"}.get(value, value) if isinstance(value, bool) else value


class TrainingSection(StrictModel):
    """Optimisation settings (names as in transformers' TrainingArguments / TRL's SFTConfig)."""

    learning_rate: float = Field(2e-5, gt=0)
    """Peak learning rate."""
    num_train_epochs: float = Field(1.0, gt=0)
    """Passes over the mixture (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps instead of counting epochs."""
    per_device_train_batch_size: int = Field(4, gt=0)
    """Rows per forward pass on each process."""
    gradient_accumulation_steps: int | None = Field(None, gt=0)
    """Forward passes per optimizer step; default 1, or derived from global_batch_size."""
    global_batch_size: int | None = Field(None, gt=0)
    """Rows per optimizer step over all processes; accumulation is derived from it and the process count."""
    max_length: int = Field(2048, gt=0)
    """Longest row in tokens (image tokens included); longer rows are dropped and counted, never truncated."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule (any transformers SchedulerType: cosine, linear, constant, ...)."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Share of the steps spent warming the learning rate up linearly."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    seed: int = 42
    """Seed for initialisation, batch order and dropout."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute precision; auto: the launcher's `mixed_precision` when it names one, else bf16 on a GPU that
    supports it, fp32 otherwise (CPU). Where the weights are updated is `master_weights`."""
    master_weights: Literal["auto", "fp32", "kahan", "pure_bf16"] = "auto"
    """Where the optimizer applies its updates when the model is loaded in 16 bits. auto/fp32: in fp32 (under
    DeepSpeed or FSDP the engine's fp32 master copy; on one process or DDP the trainable parameters are
    upcast to fp32 and the forward runs under bf16/fp16 autocast, frozen ones stay in the load dtype).
    kahan: trainable parameters stay 16-bit and torch-optimi's AdamW keeps each update with Kahan
    summation (about 10 instead of 16 bytes per trainable parameter; `pip install 'mlan[optimi]'`; one
    process or DDP only). pure_bf16: 16-bit weights and AdamW states with nothing to keep small updates:
    at lr 2e-5 most of them round away (said in one warning line)."""
    engine: Literal["auto", "ddp", "zero2", "zero3", "zero3_offload", "fsdp2"] = "auto"
    """How the model is spread over processes. auto: what the launcher says (an accelerate config with
    `distributed_type: DEEPSPEED` or `FSDP`), else DDP (one process: no engine). zero2 / zero3 /
    zero3_offload: DeepSpeed ZeRO with mlan's configs (`recipes/deepspeed/*.json`, LLaVA's and MLAN's
    zero2/zero3 settings), under `torchrun`, the `deepspeed` launcher or `accelerate launch`
    (`pip install 'mlan[deepspeed]'`). fsdp2: PyTorch FSDP2, each model kind's decoder and vision-encoder
    layers wrapped (GPUs only: accelerate does not shard on a CPU)."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON of your own, used instead of mlan's for the zero* engines (batch, accumulation,
    clipping and precision should be "auto": the recipe sets them)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    assistant_only_loss: bool = True
    """Loss on assistant tokens only (needs {% generation %} markers in the chat template); image tokens never count."""
    chat_template: Literal["auto", "plain"] = "auto"
    """auto: the model's own template when it marks assistant turns, else Vicuna-v1. plain: LLaVA's stage-1
    format (`<image>` then the caption and a newline; no instruction, no system prompt); the model keeps its own."""
    batch_order: Literal["llava", "wide", "random"] = "random"
    """How rows are ordered into batches. random (default): the Trainer's uniformly random order, which with
    `packing` (on by default) reaches a held-out target in 0.66x plain TRL's time at the same score
    (docs/benchmarks.md). llava: LLaVA's `group_by_modality_length`, what MLAN trained with (its recipes set
    it): each modality shuffled, sorted by length only inside one optimizer step's rows, so a batch is one
    modality and a random draw of its sources. wide: sorted by length inside groups of 50 batches (least
    padding, but a batch then mostly holds one source, and the model learns more slowly). The older
    `group_by_modality_length: true|false` is still read as llava|random."""
    packing: Literal["auto", "in_batch", "off"] = "auto"
    """in_batch: each batch's rows, image rows included, packed into as few rows as fit, without padding
    (positions restarting per row, attention kept inside each row): the same rows and the same loss per
    step as the padded batch, less computation. With a flash-attention kernel a batch is one row of
    variable-length rows; with sdpa, eager or flex_attention rows of the batch's longest row with a
    block-diagonal mask. auto: in_batch wherever the kernel keeps rows apart, off with Wings (its learners
    attend across a whole row). off: padded batches. The older `padding_free: on|off|auto` reads as
    in_batch|off|auto."""
    logging_steps: int = Field(10, gt=0)
    """Log loss and learning rate every this many optimizer steps."""
    save_steps: int = Field(500, gt=0)
    """Write a resumable checkpoint every this many optimizer steps."""
    save_total_limit: int = Field(2, ge=1)
    """Checkpoints kept; at least 2 so a checkpoint cut short by a crash still leaves a complete one."""
    dataloader_num_workers: int = Field(0, ge=0)
    """Worker processes decoding images and tokenizing batches."""
    report_to: str | list[str] = "none"
    """Experiment trackers that receive the training and validation metrics (loss, learning rate, grad norm,
    tokens): `none`, `all` (every installed one), or one or a list of tensorboard, wandb, trackio, mlflow,
    comet_ml, clearml, dvclive, neptune, swanlab, codecarbon, dagshub, azure_ml, flyte, kubeflow. Each must be
    installed. TensorBoard writes its event files to `<output>/tensorboard/` (while the run lasts:
    `<output>.checkpoints/tensorboard/`; TENSORBOARD_LOGGING_DIR overrides); the others read their own
    environment variables (WANDB_PROJECT, MLFLOW_TRACKING_URI, ...). The run is named after the recipe."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Further SFTConfig fields, passed unchanged (e.g. {optim: adamw_torch_fused, torch_compile: true})."""

    @model_validator(mode="before")
    @classmethod
    def _older_batch_order(cls, data: Any) -> Any:
        # `group_by_modality_length` named the order before `batch_order` existed (recipes, saved runs).
        # true meant a wider grouping under LLaVA's name; it now gets LLaVA's rule, which the name promised.
        if not isinstance(data, dict) or "group_by_modality_length" not in data:
            return data
        data = dict(data)
        old = data.pop("group_by_modality_length")
        if not isinstance(old, bool):
            raise ValueError(f"group_by_modality_length: expected true or false, got {old!r} (or set batch_order)")
        mapped = "llava" if old else "random"
        if data.get("batch_order", mapped) != mapped:
            raise ValueError(
                f"group_by_modality_length: {str(old).lower()} means batch_order {mapped}, but batch_order is "
                f"{data['batch_order']}; set batch_order only"
            )
        data["batch_order"] = mapped
        return data

    @model_validator(mode="before")
    @classmethod
    def _older_padding_free(cls, data: Any) -> Any:
        # `padding_free` packed text-only batches before `packing` packed every batch (recipes, saved runs).
        if not isinstance(data, dict) or "padding_free" not in data:
            return data
        data = dict(data)
        old = _on_off(data.pop("padding_free"))
        if old not in ("on", "off", "auto"):
            raise ValueError(f"padding_free: expected on, off or auto, got {old!r} (or set packing)")
        mapped = {"on": "in_batch"}.get(old, old)
        if _on_off(data.get("packing", mapped), "in_batch") != mapped:
            raise ValueError(
                f"padding_free: {old} means packing {mapped}, but packing is {data['packing']}; set packing only"
            )
        data["packing"] = mapped
        return data

    @field_validator("packing", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        return _on_off(value, "in_batch")

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        for name in names:
            if name not in (*TRACKERS, "none", "all"):
                raise ValueError(f"unknown tracker {name!r} (none, all, or one or a list of {', '.join(TRACKERS)})")
        if len(names) > 1 and {"none", "all"} & set(names):
            raise ValueError("none and all stand alone, not in a list of trackers")
        return value

    @model_validator(mode="after")
    def _batch(self) -> TrainingSection:
        if self.global_batch_size is not None and self.gradient_accumulation_steps is not None:
            raise ValueError("set global_batch_size or gradient_accumulation_steps, not both")
        if self.global_batch_size is not None and self.global_batch_size % self.per_device_train_batch_size:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of "
                f"per_device_train_batch_size {self.per_device_train_batch_size}"
            )
        return self


class OutputSection(StrictModel):
    """Where the trained model goes and what is kept."""

    dir: str | None = None
    """Output folder: a Hugging Face LLaVA folder (or LoRA adapter folder) with recipe, logs, model card;
    default `runs/<recipe name>`."""
    merge_lora: bool = False
    """For lora/qlora: also write the adapter merged into the base weights, as a full LLaVA folder in `merged/`."""
    keep_checkpoints: bool = False
    """Keep the last resumable checkpoints in `checkpoints/` (they hold optimizer state: several times the model)."""


# Fields of WingsConfig that shape the learners' tensors and routing: a stage-2 run that starts from a
# stage-1 Wings folder must use the values that folder was saved with.
WINGS_ARCHITECTURE_FIELDS = ("rank", "layers", "router", "router_max_positions")


class WingsTraining(WingsConfig):
    """Train a Wings model (Zhang et al. 2024): the learner settings plus which of the two stages this run is."""

    stage: Literal[1, 2] = 1
    """1: projector + visual learners (learners added directly, no router; LLM and vision tower frozen).
    2: visual + textual learners + router + full LLM, projector at its own rate (vision tower frozen).
    Stage 2 started from a stage-1 output folder continues with its learners."""

    def learner_config(self) -> WingsConfig:
        """The `WingsConfig` part (what a saved Wings folder records), without the stage."""
        return WingsConfig.model_validate(self.model_dump(exclude={"stage"}))


class SFTRecipe(StrictModel):
    """One fine-tuning run of a LLaVA-style model with TRL's SFTTrainer."""

    name: str | None = None
    """Short name for the run (model card title, default output folder `runs/<name>`); the CLI defaults it to
    the recipe file's name."""
    description: str | None = None
    """What this recipe is for (copied into the model card)."""
    model: ModelSection
    """The model to fine-tune."""
    train: TrainSection = Field(default_factory=TrainSection)
    """Which parts are trained (full / LoRA / QLoRA, projector, vision tower)."""
    data: DataSection
    """The training mixture."""
    training: TrainingSection = Field(default_factory=TrainingSection)
    """Optimisation settings."""
    output: OutputSection = Field(default_factory=OutputSection)
    """Output folder and what is written there."""
    wings: WingsTraining | None = None
    """Train Wings learners (visual + textual low-rank attention beside every decoder layer, with a router)
    instead of plain SFT. The stage decides what trains and at which rates (`wings.stage1` / `wings.stage2`
    learning rates, not `training.learning_rate`); the output is a Wings folder (`mlan.wings.load_wings_model`)."""

    @model_validator(mode="after")
    def _merge_needs_lora(self) -> SFTRecipe:
        if self.output.merge_lora and self.train.language_model not in ("lora", "qlora"):
            raise ValueError("output.merge_lora needs train.language_model lora or qlora")
        return self

    @model_validator(mode="after")
    def _wings_owns_what_trains(self) -> SFTRecipe:
        # With Wings the stage decides the trainable parts and per-group rates; a `train` or
        # `training.learning_rate` value written in the recipe that the stage would silently
        # override is refused instead.
        if self.wings is None:
            return self
        stage, tr = self.wings.stage, self.train
        if tr.language_model in ("lora", "qlora"):
            raise ValueError(
                f"wings: train.language_model {tr.language_model} is not supported with Wings "
                "(stage 1 freezes the language model, stage 2 trains it in full)"
            )
        if tr.vision_tower:
            raise ValueError("wings: the vision tower stays frozen in both Wings stages (set train.vision_tower false)")
        want = "frozen" if stage == 1 else "full"
        if "language_model" in tr.model_fields_set and tr.language_model != want:
            raise ValueError(
                f"wings: stage {stage} trains the language model {want!r}, not {tr.language_model!r} "
                "(leave train.language_model out)"
            )
        if "projector" in tr.model_fields_set and not tr.projector:
            raise ValueError("wings: both Wings stages train the projector (leave train.projector out)")
        if "learning_rate" in self.training.model_fields_set:
            raise ValueError(f"wings: set the per-group rates in wings.stage{stage} instead of training.learning_rate")
        return self

    @model_validator(mode="after")
    def _wings_router_kernel(self) -> SFTRecipe:
        # The paper's router reads the main attention's probabilities, which only eager attention returns:
        # a recipe with it loads eager attention unless it names another kernel, which is refused.
        if self.wings is None or self.wings.router != "attention":
            return self
        kernel = self.model.attn_implementation
        if kernel is None:
            self.model.attn_implementation = "eager"
        elif kernel != "eager":
            raise ValueError(
                f"wings.router: 'attention' needs eager attention, but model.attn_implementation is {kernel!r} "
                "(leave it out or set eager, or use router: modality)"
            )
        return self
