"""`run_sft`: fine-tune a LLaVA-style model on a mixture with TRL's SFTTrainer.

Order of work: every input is checked first (mixture, model, processor vs model, max length,
LoRA targets, SFTConfig extras, checkpoints to resume), then rows are measured and over-long ones
dropped, then the model is loaded, frozen as the recipe says and trained. Checkpoints go to
`<output>.checkpoints/` beside the output folder, so a killed run leaves them for `--resume` while
the output folder itself only ever appears complete.

The same function runs under `accelerate launch` (DDP, FSDP, DeepSpeed): every process calls it,
the Trainer shards the batches, the main process writes the output folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan.config.base import dump_config
from mlan.config.recipe import SFTRecipe
from mlan.errors import MlanError, first_line
from mlan.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir
from mlan.paths import looks_like_path

log = logging.getLogger(__name__)

GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")
# SFTConfig fields that the recipe sets from its own fields; `training.extra` may not set them twice.
MANAGED_SFT_FIELDS = {
    "output_dir": "output.dir",
    "max_length": "training.max_length",
    "assistant_only_loss": "training.assistant_only_loss",
    "learning_rate": "training.learning_rate",
    "num_train_epochs": "training.num_train_epochs",
    "max_steps": "training.max_steps",
    "per_device_train_batch_size": "training.per_device_train_batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "lr_scheduler_type": "training.lr_scheduler_type",
    "warmup_steps": "training.warmup_ratio",
    "warmup_ratio": "training.warmup_ratio",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "seed": "training.seed",
    "data_seed": "training.seed",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "use_cpu": "training.precision",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "activation_checkpointing": "training.gradient_checkpointing",
    "report_to": "training.report_to",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.save_total_limit",
    "dataloader_num_workers": "training.dataloader_num_workers",
    "train_sampling_strategy": "training.group_by_modality_length",
}

# Where TensorBoard event files go: `<output>.checkpoints/tensorboard/` while the run lasts (kept
# for a resumed run), then `<output>/tensorboard/`.
TENSORBOARD_DIR = "tensorboard"


@dataclass
class ModelInfo:
    """What the pre-flight checks learned about the model and its processor."""

    path: str
    processor: Any
    config: Any
    image_token_id: int
    image_seq_length: int
    chat_template: str
    template_source: str
    min_image_row: int


@dataclass
class SFTResult:
    """What one SFT run produced (also written to `train_results.json` in the output folder)."""

    output_dir: Path
    steps: int
    train_loss: float | None
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    runtime_s: float
    parameters: dict[str, dict[str, int]]
    rows: dict[str, int]
    world_size: int
    global_batch_size: int
    gradient_accumulation_steps: int
    precision: str
    resumed_from: str | None = None
    merged_dir: Path | None = None
    rank_checksums: list[str] = field(default_factory=list)
    is_main_process: bool = True

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        d = dataclasses.asdict(self)
        d["output_dir"] = str(self.output_dir)
        d["merged_dir"] = str(self.merged_dir) if self.merged_dir else None
        d.pop("is_main_process")
        return d


def output_dir(recipe: SFTRecipe) -> Path:
    """The run's output folder: `output.dir`, or `runs/<name>` (where eval and merge look by default)."""
    if recipe.output.dir:
        return Path(recipe.output.dir).expanduser()
    from mlan.runs import run_dir

    return run_dir(recipe.name or "sft")


def checkpoint_dir(recipe: SFTRecipe) -> Path:
    """Where the resumable checkpoints of a recipe's run live: beside the output folder."""
    out = output_dir(recipe)
    return out.parent / f"{out.name}.checkpoints"


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer state was written (the Trainer writes it last)."""
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


# --------------------------------------------------------------------------- pre-flight checks


def resolve_mixture(recipe: SFTRecipe) -> Path:
    """The built mixture folder; a `data.spec` is built first when its folder does not exist yet."""
    data = recipe.data
    if data.mixture is not None:
        return Path(data.mixture).expanduser()
    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.paths import resolve_config
    from mlan.runs import mixture_dir

    spec_path = resolve_config(data.spec, "data_mixtures")
    spec = load_config(spec_path, MixtureSpec)
    build_dir = Path(data.build_dir).expanduser() if data.build_dir else mixture_dir(spec.name)
    if (build_dir / "manifest.json").is_file():
        built = json.loads((build_dir / "manifest.json").read_text(encoding="utf-8"))
        # The mixture stage hashes its resolved spec: a folder built from another version of it is stale.
        want = _spec_hash(spec)
        if want is not None and built.get("config_hash") not in (None, want):
            raise MlanError(
                f"data.spec {data.spec}: {build_dir} was built from a different spec "
                f"(config hash {built.get('config_hash')} != {want}); rebuild it with "
                f"`mlan build-mixture {spec_path} --out {build_dir} --overwrite` or set data.build_dir"
            )
        log.info("using the mixture already built at %s", build_dir)
        return build_dir
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MlanError(
            f"data.spec {data.spec}: build the mixture once before a multi-process run "
            f"(mlan build-mixture {spec_path} --out {build_dir})"
        )
    from mlan.data.mixture import build_mixture

    log.info("building mixture %s into %s", spec_path, build_dir)
    build_mixture(spec, build_dir)
    return build_dir


def _spec_hash(spec) -> str | None:
    """The mixture stage's config hash of a spec, when it exposes one."""
    try:
        from mlan.data.manifest import config_hash
    except ImportError:
        return None
    return config_hash(spec)


def inspect_model(recipe: SFTRecipe) -> ModelInfo:
    """Load config and processor (no weights) and check they form a LLaVA model we can train."""
    from transformers import AutoConfig, AutoProcessor

    path = recipe.model.path
    local = Path(path).expanduser()
    kwargs = {"revision": recipe.model.revision} if recipe.model.revision else {}
    if local.exists():
        path = str(local)
        if not (local / "config.json").is_file():
            raise MlanError(f"model.path {path}: no config.json (not a Hugging Face model folder)")
    elif looks_like_path(path):
        # Not a hub id: a local folder that is not there, e.g. the shipped recipes' placeholder.
        raise MlanError(f"model.path {path}: folder not found (set your checkpoint: -o model.path=DIR or a hub id)")
    else:
        from mlan.hub import require_hub

        require_hub(path, "model.path", "set model.path to a local model folder (-o model.path=DIR)", model=True)
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise MlanError(f"model.path {path}: cannot load the model config ({first_line(e)})") from None
    if config.model_type != "llava":
        raise MlanError(
            f"model.path {path}: model type {config.model_type!r} is not LLaVA-style "
            "(expected a LlavaForConditionalGeneration checkpoint, model_type 'llava')"
        )
    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise MlanError(f"model.path {path}: cannot load the processor ({first_line(e)})") from None
    if not hasattr(processor, "image_processor") or not getattr(processor, "image_token", None):
        raise MlanError(f"model.path {path}: the processor ({type(processor).__name__}) has no image processor/token")
    tokenizer = processor.tokenizer
    token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    model_token_id = getattr(config, "image_token_id", None)
    if model_token_id is None:
        model_token_id = getattr(config, "image_token_index", None)
    if token_id != model_token_id:
        raise MlanError(
            f"model.path {path}: the processor's image token {processor.image_token!r} has id {token_id}, "
            f"but the model expects image token id {model_token_id}"
        )
    image_seq_length = _processor_image_tokens(processor, config, token_id)
    expected = _model_image_features(config)
    if expected is not None and image_seq_length != expected:
        raise MlanError(
            f"model.path {path}: the processor expands {processor.image_token!r} into {image_seq_length} tokens, "
            f"but the model makes {expected} image features per image (check patch_size / "
            "vision_feature_select_strategy in the processor)"
        )
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    if positions and recipe.training.max_length > positions:
        raise MlanError(
            f"training.max_length {recipe.training.max_length}: longer than the language model's "
            f"{positions} positions (max_position_embeddings)"
        )
    template, source = _training_template(recipe, processor, path)
    min_row = _min_image_row(processor, template, image_seq_length)
    if recipe.training.max_length < min_row:
        raise MlanError(
            f"training.max_length {recipe.training.max_length}: shorter than one image row "
            f"({min_row} tokens, {image_seq_length} of them image tokens)"
        )
    return ModelInfo(path, processor, config, token_id, image_seq_length, template, source, min_row)


def _processor_image_tokens(processor, config, image_token_id: int) -> int:
    """How many tokens the processor makes of one image (measured on a blank image)."""
    from PIL import Image

    side = int(getattr(config.vision_config, "image_size", 336))
    enc = processor(text=processor.image_token, images=[Image.new("RGB", (side, side))], return_tensors="pt")
    return int((enc["input_ids"] == image_token_id).sum())


def _model_image_features(config) -> int | None:
    """Image features per image of a LLaVA-1.5-style model (fixed resolution), or None if unknown."""
    vc = config.vision_config
    size, patch = getattr(vc, "image_size", None), getattr(vc, "patch_size", None)
    if not size or not patch:
        return None
    n = (size // patch) ** 2
    return n + 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else n


def _training_template(recipe: SFTRecipe, processor, path: str) -> tuple[str, str]:
    """The chat template to train with: the model's own when it marks assistant turns for the loss,
    otherwise mlan's Vicuna-v1 template (the format MLAN trains in), which is then saved with the model."""
    from mlan.tiny import CHAT_TEMPLATE

    own = processor.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if own and (not recipe.training.assistant_only_loss or GENERATION_MARKER.search(own)):
        return own, "model"
    # Real Llama checkpoints expect <s> first; TRL's collator tokenizes without special tokens.
    log.warning(
        "%s: chat template %s; training with mlan's Vicuna-v1 template (USER: ... ASSISTANT: ...)",
        path,
        "missing" if not own else "has no {% generation %} markers for assistant-only loss",
    )
    return "{{- bos_token -}}" + CHAT_TEMPLATE, "vicuna_v1"


def _min_image_row(processor, template: str, image_seq_length: int) -> int:
    """Tokens of the shortest possible image row: one image, a one-letter question and answer."""
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
    ]
    text = processor.apply_chat_template(msgs, chat_template=template, tokenize=False)
    return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) + image_seq_length - 1


def check_lora_targets_on_meta(recipe: SFTRecipe, config) -> int:
    """Match the LoRA targets on a weightless copy of the model, before anything is loaded."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    from mlan.train.freeze import check_lora_targets

    with init_empty_weights():
        meta = LlavaForConditionalGeneration(config)
    return len(check_lora_targets(meta, recipe.train.lora.target_modules))


def check_extra(extra: dict[str, Any]) -> None:
    """`training.extra` keys must be SFTConfig fields that the recipe does not already set."""
    from trl import SFTConfig

    valid = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in extra:
        if key in MANAGED_SFT_FIELDS:
            raise MlanError(f"training.extra.{key}: set {MANAGED_SFT_FIELDS[key]} instead")
        if key not in valid:
            hint = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            raise MlanError(
                f"training.extra.{key}: not an SFTConfig field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )


def check_wings(recipe: SFTRecipe, info: ModelInfo) -> None:
    """Wings pre-flight: add the learners to a weightless copy of the model (every check `add_wings`
    makes: LLaVA-style, Llama-style layers, layer indices, router vs attention kernel), and, when
    `model.path` is a Wings folder (stage 2 after stage 1), check its learners fit the recipe's."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    from mlan.config.recipe import WINGS_ARCHITECTURE_FIELDS
    from mlan.wings import add_wings, is_wings_dir
    from mlan.wings.io import WINGS_WEIGHTS, read_wings_config

    config = recipe.wings.learner_config()
    local = Path(info.path)
    if local.is_dir() and is_wings_dir(local):
        saved, _ = read_wings_config(local)
        for name in WINGS_ARCHITECTURE_FIELDS:
            if getattr(saved, name) != getattr(config, name):
                raise MlanError(
                    f"wings.{name}: {getattr(config, name)!r}, but the Wings model at model.path {local} was saved "
                    f"with {getattr(saved, name)!r} (set wings.{name}={getattr(saved, name)!r} to continue its learners)"
                )
        if not (local / WINGS_WEIGHTS).is_file():
            raise MlanError(f"model.path {local}: Wings folder without learner weights ({WINGS_WEIGHTS})")
    kwargs = {}
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    with init_empty_weights():
        meta = LlavaForConditionalGeneration._from_config(info.config, **kwargs)
    add_wings(meta, config)


def _add_wings(model, recipe: SFTRecipe, path: str) -> list[dict]:
    """Add the recipe's Wings learners (restored from `path` when it is a Wings folder); the stage's
    optimizer groups (this also sets what trains and whether the router is used)."""
    from mlan.wings import add_wings, is_wings_dir, load_wings_weights, wings_parameter_groups

    config = recipe.wings.learner_config()
    add_wings(model, config)
    if Path(path).is_dir() and is_wings_dir(path):
        # from_pretrained read the base only; the learners of the earlier stage live beside it.
        load_wings_weights(model, path)
        log.info("Wings: learners restored from %s", path)
    return wings_parameter_groups(model, recipe.wings.stage, config)


def _image_rows_only(split, mixture_dir: Path, name: str):
    """Wings stage 1 trains only the projector and the visual learners, which a text-only row does not
    reach: such rows give no gradient at all (a batch of them would fail the backward pass), so they
    are left out, as the paper's stage 1 trains on image data only."""
    keep = [i for i, has in enumerate(split.has_image) if has]
    if name == "train" and not keep:
        raise MlanError(
            f"data.mixture {mixture_dir}: Wings stage 1 trains on image rows, and this mixture has none "
            "(use a mixture with vision rows)"
        )
    if split.kept["language"]:
        log.info(
            "Wings stage 1: leaving out %d text-only %s rows (no gradient reaches the visual learners)",
            split.kept["language"],
            name,
        )
    if not keep:
        return None
    return dataclasses.replace(
        split,
        dataset=split.dataset.select(keep),
        lengths=[split.lengths[i] for i in keep],
        has_image=[True] * len(keep),
        kept={"language": 0, "vision": len(keep)},
    )


def _resolve_precision(precision: str) -> tuple[str, bool]:
    """(precision actually used, whether a GPU is used)."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise MlanError("training.precision fp16: needs a GPU (use bf16 or fp32 on a CPU)")
    return precision, cuda


def _recipe_fingerprint(recipe: SFTRecipe) -> dict[str, Any]:
    """The parts of a recipe that must not change between a run and its resumption."""
    d = recipe.model_dump(mode="json")
    d.pop("output", None)
    d.pop("name", None)
    d.pop("description", None)
    # Trackers do not change the training: a resumed run may report elsewhere (and checkpoints
    # written before the field existed still match).
    d["training"].pop("report_to", None)
    return d


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out.extend(_diff_paths(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return [] if a == b else [prefix.rstrip(".")]


def decide_resume(recipe: SFTRecipe, ckpt_dir: Path, resume: bool | None) -> Path | None:
    """The checkpoint to resume from (None: start fresh), checking it belongs to this recipe."""
    last = last_complete_checkpoint(ckpt_dir)
    if resume is False:
        return None
    if last is None:
        if resume:
            raise MlanError(f"--resume: no complete checkpoint in {ckpt_dir}")
        return None
    saved = ckpt_dir / "recipe.json"
    if saved.is_file():
        diff = _diff_paths(json.loads(saved.read_text(encoding="utf-8")), _recipe_fingerprint(recipe))
        if diff:
            raise MlanError(
                f"{ckpt_dir}: checkpoints come from a different recipe ({', '.join(diff[:3])} differ); "
                "pass --no-resume to discard them and start over"
            )
    return last


# --------------------------------------------------------------------------- training


class _ImageTokenMasking:
    """Wraps TRL's collator so `<image>` placeholder tokens never count as targets.

    With assistant-only loss they are masked already; without it TRL keeps them as labels
    (576 per image at LLaVA-1.5 scale), which trains the model to predict placeholders.
    A class rather than a closure so that DataLoader workers started with `spawn` can pickle it.
    """

    def __init__(self, collator, image_token_id: int) -> None:
        self.collator = collator
        self.image_token_id = image_token_id

    def __call__(self, examples):
        batch = self.collator(examples)
        batch["labels"][batch["input_ids"] == self.image_token_id] = -100
        return batch


def _image_token_masking(collator, image_token_id: int) -> _ImageTokenMasking:
    """TRL's collator with image placeholder tokens masked out of the labels."""
    return _ImageTokenMasking(collator, image_token_id)


def _trainer_class():
    from trl import SFTTrainer

    from mlan.train.sampler import ModalityLengthGroupedSampler

    class MlanSFTTrainer(SFTTrainer):
        """SFTTrainer with the modality/length-grouped sampler on the Trainer's sampler hook."""

        def __init__(self, *args, row_lengths=None, row_has_image=None, wings_groups=None, **kwargs):
            self._row_lengths = row_lengths
            self._row_has_image = row_has_image
            self._wings_groups = None
            if wings_groups is not None:
                # Groups by parameter name, taken before any wrapping: FSDP2 replaces the parameter
                # objects when it shards the model, before the Trainer creates the optimizer.
                model = kwargs.get("model", args[0] if args else None)
                names = {id(p): n for n, p in model.named_parameters()}
                self._wings_groups = [{**g, "params": {names[id(p)] for p in g["params"]}} for g in wings_groups]
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            # Wings trains each part at its own rate. The Trainer's optimizer and kwargs
            # (`optim`, betas, eps...) are kept; only the groups are ours, split by weight decay as
            # the Trainer splits them, so its scheduler scales every group's own rate.
            if self._wings_groups is None or self.optimizer is not None:
                return super().create_optimizer(model)
            import torch

            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            by_name = {_unwrapped_name(n): (n, p) for n, p in opt_model.named_parameters()}
            groups = []
            for g in self._wings_groups:
                lost = sorted(g["params"] - by_name.keys())
                if lost:
                    raise MlanError(
                        f"wings: parameter {lost[0]} is not found in the wrapped model (FSDP1 without "
                        "use_orig_params flattens parameters; use FSDP2, DeepSpeed or DDP)"
                    )
                own = [by_name[n] for n in sorted(g["params"])]
                for suffix, weight_decay, decayed in (("", self.args.weight_decay, True), ("_no_decay", 0.0, False)):
                    params = [p for n, p in own if (n in decay) == decayed]
                    if params:
                        groups.append(
                            {"name": g["name"] + suffix, "params": params, "lr": g["lr"], "weight_decay": weight_decay}
                        )
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or {
                "params",
                "model",
                "optimizer_dict",
            } & set(kwargs):
                raise MlanError(
                    f"training.extra.optim {self.args.optim}: not supported with Wings (use an AdamW variant)"
                )
            self.optimizer = cls(groups, **kwargs)
            return self.optimizer

        def _get_train_sampler(self, train_dataset=None):
            if self._row_lengths is None:
                return super()._get_train_sampler(train_dataset)
            self._mlan_sampler = ModalityLengthGroupedSampler(
                self._row_lengths,
                self._row_has_image,
                per_device_batch=self.args.per_device_train_batch_size,
                world_size=self.args.world_size,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
            return self._mlan_sampler

        def _run_epoch(self, *args, **kwargs):
            # Under DDP accelerate wraps the batch sampler in a BatchSamplerShard, through which
            # neither accelerate nor the Trainer forwards set_epoch: every epoch would repeat the
            # first epoch's order. Set it here, where the Trainer names the epoch it starts.
            sampler = getattr(self, "_mlan_sampler", None)
            if sampler is not None and "epoch" in kwargs:
                sampler.set_epoch(int(kwargs["epoch"]))
            return super()._run_epoch(*args, **kwargs)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model if model is not None else self.model
            folder = Path(resume_from_checkpoint)
            plain = not (self.is_fsdp_enabled or self.is_deepspeed_enabled or hasattr(model, "peft_config"))
            if not plain or not _checkpoint_weight_files(folder):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            _load_llava_weights(model, folder)
            from mlan.wings import get_runtime, load_wings_weights

            if get_runtime(model) is not None:
                # The checkpoint's model.safetensors holds the base only; the learners are beside it.
                load_wings_weights(model, folder)

    return MlanSFTTrainer


_WRAPPER_SEGMENTS = re.compile(r"(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|module|_orig_mod)\.")


def _unwrapped_name(name: str) -> str:
    """A parameter's name without the segments DDP / FSDP / activation checkpointing / compile add."""
    return _WRAPPER_SEGMENTS.sub("", name)


# save_pretrained writes LLaVA weights in the original hub layout (`language_model.model.*`,
# `vision_tower.*`, ...), while the model's own names are `model.language_model.*`, ... The
# Trainer resumes with `load_state_dict(strict=False)` on the raw file, so on a LLaVA model it
# silently loads nothing and training continues from the base weights with the restored optimizer.
# from_pretrained knows the renaming but builds a second model; these four prefixes are all it takes.
_LLAVA_DISK_TO_MEMORY = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def _checkpoint_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def _load_llava_weights(model, folder: Path) -> None:
    """Load a checkpoint's weights into a LLaVA model, whichever key layout the files use; strict."""
    from safetensors.torch import load_file

    own = set(model.state_dict())
    state = {}
    for f in _checkpoint_weight_files(folder):
        for key, value in load_file(str(f), device="cpu").items():
            if key not in own:
                for old, new in _LLAVA_DISK_TO_MEMORY:
                    if key.startswith(old) and new + key[len(old) :] in own:
                        key = new + key[len(old) :]
                        break
            state[key] = value
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    # Wings learners are stored apart (wings.safetensors) and restored by the caller.
    missing = [k for k in result.missing_keys if k not in tied and ".wings." not in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{folder}: checkpoint weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def _load_model(recipe: SFTRecipe, info: ModelInfo, cuda: bool):
    import torch
    from transformers import LlavaForConditionalGeneration

    kwargs: dict[str, Any] = {}
    if recipe.model.revision:
        kwargs["revision"] = recipe.model.revision
    if recipe.model.attn_implementation:
        kwargs["attn_implementation"] = recipe.model.attn_implementation
    kwargs["dtype"] = "auto" if recipe.model.dtype == "auto" else getattr(torch, recipe.model.dtype)
    if recipe.train.language_model == "qlora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if cuda else torch.float32
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            # Only the LLM's linear layers are quantized; vision tower, projector and head stay exact.
            # transformers 5 matches these from the start of the full module name (or as a suffix),
            # so a bare "vision_tower" would not match "model.vision_tower.*".
            llm_int8_skip_modules=[r".*vision_tower", r".*multi_modal_projector", "lm_head"],
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else "cpu"
    model = LlavaForConditionalGeneration.from_pretrained(info.path, **kwargs)
    return model


def _peft_config(recipe: SFTRecipe):
    from peft import LoraConfig

    from mlan.train.freeze import lora_target_regex

    tr = recipe.train
    modules_to_save = []
    if tr.projector:
        modules_to_save.append("multi_modal_projector")
    if tr.vision_tower:
        modules_to_save.append("vision_tower")
    return LoraConfig(
        r=tr.lora.r,
        lora_alpha=tr.lora.alpha,
        lora_dropout=tr.lora.dropout,
        target_modules=lora_target_regex(tr.lora.target_modules),
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def _wings_sft_defaults(recipe: SFTRecipe) -> dict[str, Any]:
    """SFTConfig settings Wings needs unless `training.extra` sets them: a text-only batch leaves the
    visual learners (and in stage 2 the router) without gradient, which DDP must be told about."""
    if recipe.wings is None or "ddp_find_unused_parameters" in recipe.training.extra:
        return {}
    return {"ddp_find_unused_parameters": True}


def _checkpointing_args(recipe: SFTRecipe) -> dict[str, Any]:
    """Activation checkpointing under its transformers 5 name (`gradient_checkpointing` is a deprecated
    alias that warns); non-reentrant unless `training.extra` sets the kwargs."""
    t = recipe.training
    args: dict[str, Any] = {"activation_checkpointing": t.gradient_checkpointing}
    own_kwargs = {"activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"} & set(t.extra)
    if t.gradient_checkpointing and not own_kwargs:
        args["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return args


def _tracking_args(recipe: SFTRecipe) -> dict[str, Any]:
    """Experiment tracking: the recipe's trackers, the run named after the recipe unless `training.extra` names it."""
    args: dict[str, Any] = {"report_to": recipe.training.report_to}
    if "run_name" not in recipe.training.extra:
        args["run_name"] = recipe.name or output_dir(recipe).name
    return args


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


def _set_up_reporting(trainer, ckpt_dir: Path) -> None:
    """mlan's progress display instead of the Trainer's printed dicts; TensorBoard logs beside the checkpoints."""
    from transformers.integrations import TensorBoardCallback

    from mlan.train.progress import use_mlan_progress

    use_mlan_progress(trainer)
    for cb in trainer.callback_handler.callbacks:
        # Its default is a timestamped folder under the checkpoint folder; TENSORBOARD_LOGGING_DIR still wins.
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(ckpt_dir / TENSORBOARD_DIR)


def _close_tensorboard(trainer) -> None:
    # The final evaluation is logged after training closed the writer, which reopens it: close it
    # again before its folder moves into the output folder.
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
            cb.tb_writer.close()
            cb.tb_writer = None


def _checksum(model) -> str:
    """SHA-256 over every parameter of this process's copy of the model, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def run_sft(recipe: SFTRecipe, *, resume: bool | None = None, overwrite: bool = False) -> SFTResult:
    """Fine-tune `recipe.model` on `recipe.data` as the recipe says; returns what was produced.

    resume: None resumes from the last complete checkpoint of this recipe's run when there is
    one; True requires one; False discards old checkpoints and starts over. overwrite: replace an
    existing output folder. Under `accelerate launch` every process calls this; only the main
    process writes the output folder (its result has `is_main_process=True`).
    """
    out = output_dir(recipe)
    ckpt_dir = checkpoint_dir(recipe)
    check_output_dir(out, overwrite)

    # ---- every check that can fail on user input, before any heavy work
    mixture_dir = resolve_mixture(recipe)
    dd, manifest = _load_mixture(mixture_dir)
    info = inspect_model(recipe)
    if recipe.train.language_model in ("lora", "qlora"):
        n = check_lora_targets_on_meta(recipe, info.config)
        log.info("LoRA targets match %d linear layers of the language model", n)
    check_extra(recipe.training.extra)
    check_report_to(recipe.training.report_to)
    if recipe.wings is not None:
        check_wings(recipe, info)
    precision, cuda = _resolve_precision(recipe.training.precision)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    t = recipe.training
    if t.global_batch_size is not None:
        per_step = t.per_device_train_batch_size * world_size
        if t.global_batch_size % per_step:
            raise MlanError(
                f"training.global_batch_size {t.global_batch_size}: not a multiple of "
                f"{t.per_device_train_batch_size} per device x {world_size} processes"
            )
        accumulation = t.global_batch_size // per_step
    else:
        accumulation = t.gradient_accumulation_steps or 1
    resume_from = decide_resume(recipe, ckpt_dir, resume)

    # ---- rows: measured exactly, over-long ones dropped and counted
    from mlan.train.data import prepare_split

    train = prepare_split(dd["train"], info.processor, info.chat_template, info.image_seq_length, t.max_length, "train")
    if len(train.dataset) == 0:
        raise MlanError(f"data.mixture {mixture_dir}: every train row is longer than max_length {t.max_length}")
    val = None
    if recipe.data.eval_at_end and "validation" in dd and len(dd["validation"]):
        val = prepare_split(
            dd["validation"], info.processor, info.chat_template, info.image_seq_length, t.max_length, "validation"
        )
        if len(val.dataset) == 0:
            val = None
    if recipe.wings is not None and recipe.wings.stage == 1:
        train = _image_rows_only(train, mixture_dir, "train")
        val = _image_rows_only(val, mixture_dir, "validation") if val is not None else None
    log.info(
        "train rows: %d language, %d vision (dropped as too long: %d language, %d vision)",
        train.kept["language"],
        train.kept["vision"],
        train.dropped["language"],
        train.dropped["vision"],
    )

    # ---- trainer
    from trl import SFTConfig

    info.processor.chat_template = info.chat_template
    sft_args = SFTConfig(
        output_dir=str(ckpt_dir),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        assistant_only_loss=t.assistant_only_loss,
        # Rows were measured and the long ones dropped: nothing may be truncated (it would cut image tokens).
        max_length=None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=t.dataloader_num_workers,
        **_checkpointing_args(recipe),
        **_tracking_args(recipe),
        **_wings_sft_defaults(recipe),
        **t.extra,
    )
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        if resume_from is None and ckpt_dir.exists():
            log.info("starting over: removing old checkpoints in %s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ckpt_dir / "recipe.json", _recipe_fingerprint(recipe))
    state.wait_for_everyone()

    from transformers import set_seed

    set_seed(t.seed)  # the same initial state (LoRA init, dropout) on every process and every run
    model = _load_model(recipe, info, cuda)
    peft_config = None
    wings_groups = None
    if recipe.wings is not None:
        wings_groups = _add_wings(model, recipe, info.path)
    elif recipe.train.language_model in ("lora", "qlora"):
        for p in model.parameters():
            p.requires_grad_(False)
        peft_config = _peft_config(recipe)
    else:
        from mlan.train.freeze import apply_freeze

        apply_freeze(model, recipe.train)

    trainer = _trainer_class()(
        model=model,
        args=sft_args,
        train_dataset=train.dataset,
        processing_class=info.processor,
        peft_config=peft_config,
        row_lengths=train.lengths if t.group_by_modality_length else None,
        row_has_image=train.has_image,
        wings_groups=wings_groups,
    )
    trainer.data_collator = _image_token_masking(trainer.data_collator, info.image_token_id)
    _set_up_reporting(trainer, ckpt_dir)
    if recipe.train.language_model == "qlora" and precision == "fp32":
        # TRL casts every trainable parameter of a quantized model to bf16 (the QLoRA paper's
        # choice under bf16 autocast); without autocast (fp32 on a CPU) the bf16 projector copy
        # then meets fp32 image features and the forward fails.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    from mlan.train.freeze import parameter_report

    params = parameter_report(trainer.model)
    if state.is_main_process:
        for comp, c in params.items():
            log.info("parameters %-15s %14s trainable of %14s", comp, f"{c['trainable']:,}", f"{c['total']:,}")
    if resume_from is not None:
        log.info("resuming from %s", resume_from)

    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    eval_loss = None
    if val is not None:
        eval_loss = float(trainer.evaluate(eval_dataset=val.dataset)["eval_loss"])
    _close_tensorboard(trainer)

    checksums: list[str] = []
    # Under DDP every process holds the whole model, and all copies must be equal; FSDP and
    # DeepSpeed shard it, so there is no whole copy per process to compare.
    if state.num_processes > 1 and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
        from accelerate.utils import gather_object

        checksums = gather_object([_checksum(trainer.accelerator.unwrap_model(trainer.model))])

    final_dir = ckpt_dir / "final"
    trainer.save_model(str(final_dir))  # collective under FSDP / DeepSpeed: every process calls it
    state.wait_for_everyone()

    from mlan.train.outputs import loss_log

    log_data = loss_log(trainer.state.log_history)
    losses = [p["loss"] for p in log_data["train"]]
    res = SFTResult(
        output_dir=out,
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss) if result.training_loss is not None else None,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        eval_loss=eval_loss,
        runtime_s=round(float(result.metrics.get("train_runtime", 0.0)), 2),
        parameters=params,
        rows={
            **train.kept,
            "dropped_language": train.dropped["language"],
            "dropped_vision": train.dropped["vision"],
        },
        world_size=state.num_processes,
        global_batch_size=t.per_device_train_batch_size * accumulation * state.num_processes,
        gradient_accumulation_steps=accumulation,
        precision=precision,
        resumed_from=str(resume_from) if resume_from else None,
        rank_checksums=checksums,
        is_main_process=state.is_main_process,
    )
    if state.is_main_process:
        res.merged_dir = _write_output(recipe, info, res, log_data, final_dir, mixture_dir, manifest, overwrite)
        if not recipe.output.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("model written to %s", out)
    state.wait_for_everyone()
    return res


def _load_mixture(mixture_dir: Path):
    from mlan.train.data import load_mixture

    return load_mixture(mixture_dir)


def _write_output(
    recipe: SFTRecipe,
    info: ModelInfo,
    res: SFTResult,
    log_data: dict[str, Any],
    final_dir: Path,
    mixture_dir: Path,
    manifest: dict[str, Any] | None,
    overwrite: bool,
) -> Path | None:
    """Assemble the output folder atomically: weights (or adapter), processor, recipe, logs, card."""
    from mlan.train.outputs import plot_loss, write_loss_log, write_model_card

    out = res.output_dir
    name = recipe.name or out.name
    lora = recipe.train.language_model in ("lora", "qlora")
    merged = None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for f in final_dir.iterdir():
            if f.name in ("README.md", "training_args.bin"):
                continue  # TRL's generic card is replaced by ours below
            shutil.move(str(f), tmp / f.name)
        info.processor.save_pretrained(tmp)
        if manifest is not None:
            shutil.copyfile(mixture_dir / "manifest.json", tmp / "mixture_manifest.json")
        if lora and recipe.output.merge_lora:
            _merge_lora(recipe, info, tmp, tmp / "merged")
            if manifest is not None:
                shutil.copyfile(mixture_dir / "manifest.json", tmp / "merged" / "mixture_manifest.json")
            merged = out / "merged"
        recipe_yaml = dump_config(recipe)
        atomic_write_text(tmp / "recipe.yaml", recipe_yaml)
        write_loss_log(tmp / "loss_log.json", log_data)
        if (final_dir.parent / TENSORBOARD_DIR).is_dir():
            shutil.move(str(final_dir.parent / TENSORBOARD_DIR), tmp / TENSORBOARD_DIR)
        plot_loss(tmp / "loss_curve.png", log_data, name)
        results = res.to_json()
        results["output_dir"] = str(out)
        results["merged_dir"] = str(merged) if merged else None
        results["mixture"] = str(mixture_dir)
        results["chat_template"] = info.template_source
        atomic_write_json(tmp / "train_results.json", results)
        write_model_card(
            tmp / "README.md",
            name=name,
            recipe=recipe,
            recipe_yaml=recipe_yaml,
            manifest=manifest,
            mixture_path=str(mixture_dir),
            results=results,
        )
        if recipe.output.keep_checkpoints:
            ckpts = tmp / "checkpoints"
            ckpts.mkdir()
            for p in sorted(final_dir.parent.glob("checkpoint-*")):
                shutil.move(str(p), ckpts / p.name)
    return merged


def _merge_lora(recipe: SFTRecipe, info: ModelInfo, adapter_dir: Path, dest: Path) -> None:
    """Fold the adapter into an unquantized copy of the base model and save a full LLaVA folder."""
    import torch
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    dtype = "auto" if recipe.model.dtype == "auto" else getattr(torch, recipe.model.dtype)
    kwargs = {"revision": recipe.model.revision} if recipe.model.revision else {}
    base = LlavaForConditionalGeneration.from_pretrained(info.path, dtype=dtype, **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    dest.mkdir(parents=True)
    merged.save_pretrained(dest)
    info.processor.save_pretrained(dest)
