"""Everything checked before any weights load: the mixture (built when only its spec is given, or
refused when stale), the model and its processor (LLaVA-style, image token, image features, max
length, chat template), LoRA targets and Wings learners on a weightless copy, trackers, precision,
the batch, `training.extra`, and the checkpoints to resume. Each mistake is one line naming the
recipe field, before any heavy work.

Light to import (torch, transformers and TRL inside the functions): `mlan.train.sft` imports this
module at its top, and `mlan.lab.run` imports that one at its top.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.config.base import load_config
from mlan.config.mixture import MixtureSpec
from mlan.config.recipe import WINGS_ARCHITECTURE_FIELDS, SFTRecipe, check_report_to
from mlan.data.manifest import config_hash
from mlan.data.mixture import build_mixture
from mlan.errors import MlanError, first_line
from mlan.families import image_token_counter, load_processor, training_template
from mlan.hub import require_hub
from mlan.paths import resolve_config
from mlan.runs import mixture_dir as default_mixture_dir
from mlan.tiny import CHAT_TEMPLATE
from mlan.train.arguments import (
    BatchShape,
    batch_shape,
    managed_args,
    managed_sources,
    process_state,
    sft_config_kwargs,
)
from mlan.train.checkpoint import decide_resume, run_record
from mlan.train.data import load_mixture
from mlan.train.engine import (
    Engine,
    check_engine,
    check_processes,
    engine_args,
    launched_processes,
    resolve_engine,
)
from mlan.train.freeze import check_lora_targets
from mlan.train.model_info import ModelInfo
from mlan.train.packing import Packing, default_kernel, resolve_packing
from mlan.train.precision import (
    PrecisionPlan,
    check_fits,
    count_parameters,
    device_memory,
    estimate_memory,
    load_dtype,
    plan_precision,
    resolve_precision,
)

log = logging.getLogger(__name__)

GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass
class Checked:
    """What the pre-flight checks established, for the run to use."""

    mixture_dir: Path
    mixture: Any  # the DatasetDict
    manifest: dict[str, Any] | None
    info: ModelInfo
    precision: str
    cuda: bool
    batch: BatchShape
    sft_args: dict[str, Any]  # SFTConfig keyword arguments
    resume_from: Path | None
    record: dict[str, Any]  # what the run is made of (mlan.train.checkpoint.run_record), kept with its checkpoints
    packing: Packing  # `training.packing` as resolved for this model
    engine: Engine  # how the model is spread over the processes (mlan.train.engine)
    plan: PrecisionPlan  # where the master weights live (mlan.train.precision)
    memory: dict[str, Any]  # parameter counts and the estimated bytes per device of the plan


def preflight(recipe: SFTRecipe, *, out: Path, ckpt_dir: Path, resume: bool | None) -> Checked:
    """Every check that can fail on user input, in order; what they established."""
    # The model first: its checks read two small files, while resolving the mixture may build one.
    info = inspect_model(recipe)
    mix_dir = resolve_mixture(recipe)
    mixture, manifest = load_mixture(mix_dir)
    check_image_row_length(recipe, info, mixture, manifest)
    if recipe.train.language_model in ("lora", "qlora"):
        n = check_lora_targets_on_meta(recipe, info)
        log.info("LoRA targets match %d linear layers of the language model", n)
    check_report_to(recipe.training.report_to)
    if recipe.wings is not None:
        check_wings(recipe, info)
    # The fields the recipe sets in SFTConfig, which `training.extra` may not set, carry the engine, the
    # precision and the accumulation for this many processes: they are worked out first.
    precision, cuda = resolve_precision(recipe.training.precision)
    engine = resolve_engine(recipe.training, launched_processes() or 1)
    state = process_state(recipe.training.extra, fsdp=engine.fsdp)
    # The engine first: FSDP on a CPU also leaves the processes unjoined, which its own line explains better.
    check_engine(engine, state, cuda, qlora=recipe.train.language_model == "qlora")
    check_processes(state)
    plan = plan_precision(
        recipe.training.master_weights, precision, load_dtype(recipe.model.dtype, info.config), engine
    )
    batch = batch_shape(recipe.training, state.num_processes)
    counts = count_parameters(recipe, info)
    check_fits(counts, plan, engine, state.num_processes, device_memory(state.local_process_index))
    memory = estimate_memory(counts, plan, engine, state.num_processes)
    managed = managed_args(
        recipe,
        checkpoints=ckpt_dir,
        precision=precision,
        cuda=cuda,
        batch=batch,
        engine_args=engine_args(engine, info.model_class, info.config),
    )
    check_extra(recipe.training.extra, managed_sources(managed))
    if plan.optimizer and "optim" in recipe.training.extra:
        raise MlanError("training.extra.optim: master_weights kahan brings its own optimizer (torch-optimi's AdamW)")
    sft_args = sft_config_kwargs(recipe, managed, run_name=recipe.name or out.name)
    packing = check_packing(recipe, info)
    record = run_record(recipe, mixture_dir=mix_dir, manifest=manifest, model_path=info.path)
    resume_from = decide_resume(record, ckpt_dir, resume)
    return Checked(
        mix_dir,
        mixture,
        manifest,
        info,
        precision,
        cuda,
        batch,
        sft_args,
        resume_from,
        record,
        packing,
        engine,
        plan,
        {"counts": dataclasses.asdict(counts), "bytes_per_device": memory, "processes": state.num_processes},
    )


def check_packing(recipe: SFTRecipe, info: ModelInfo) -> Packing:
    """`training.packing` resolved against the attention kernel the model will load with: the recipe's,
    else transformers' default, read from a weightless copy only when the answer depends on it."""
    setting = recipe.training.packing
    kernel = recipe.model.attn_implementation
    mrope = info.kind == kinds.QWEN2_5_VL
    if kernel is None and recipe.wings is None and setting != "off" and not mrope:
        kernel = default_kernel(info.config, info.model_class)
    return resolve_packing(setting, kernel, wings=recipe.wings is not None, mrope=mrope)


def resolve_mixture(recipe: SFTRecipe) -> Path:
    """The built mixture folder; a `data.spec` is built first when its folder does not exist yet."""
    data = recipe.data
    if data.mixture is not None:
        return Path(data.mixture).expanduser()
    spec_path = resolve_config(data.spec, "data_mixtures")
    spec = load_config(spec_path, MixtureSpec)
    build_dir = Path(data.build_dir).expanduser() if data.build_dir else default_mixture_dir(spec.name)
    if (build_dir / "manifest.json").is_file():
        built = json.loads((build_dir / "manifest.json").read_text(encoding="utf-8"))
        # The mixture stage hashes its resolved spec: a folder built from another version of it is stale.
        want = config_hash(spec)
        if built.get("config_hash") not in (None, want):
            raise MlanError(
                f"data.spec {data.spec}: {build_dir} was built from a different spec "
                f"(config hash {built.get('config_hash')} != {want}); rebuild it with "
                f"`mlan build-mixture {spec_path} --out {build_dir} --overwrite` or set data.build_dir"
            )
        log.info("using the mixture already built at %s", build_dir)
        return build_dir
    if (launched_processes() or 1) > 1:
        raise MlanError(
            f"data.spec {data.spec}: build the mixture once before a multi-process run "
            f"(mlan build-mixture {spec_path} --out {build_dir})"
        )
    log.info("building mixture %s into %s", spec_path, build_dir)
    build_mixture(spec, build_dir)
    return build_dir


def inspect_model(recipe: SFTRecipe) -> ModelInfo:
    """Load config and processor (no weights) and check they form a LLaVA model we can train."""
    from transformers import AutoConfig

    path = recipe.model.path
    kwargs = {"revision": recipe.model.revision} if recipe.model.revision else {}
    try:
        folder = kinds.local_folder(path, "model.path")
    except MlanError as e:
        # e.g. the shipped recipes' placeholder folder, not there yet
        raise MlanError(f"{e} (set your checkpoint: -o model.path=DIR or a hub id)") from None
    if folder is not None:
        path = str(folder)
    else:
        require_hub(path, "model.path", "set model.path to a local model folder (-o model.path=DIR)", model=True)
    raw = kinds.read_model_config(path, revision=recipe.model.revision, what="model.path")
    kind = kinds.kind_of(raw, folder, path)
    if kind == kinds.ORIGINAL_LLAVA:
        raise kinds.original_layout_error(path, "model.path")
    if kind == kinds.LLAVA_NEXT:
        # LLaVA-NeXT's anyres tiles change the image-token count per image, and its processor's count is
        # not wired here as LLaVA-OneVision's and Qwen2.5-VL's are; it is evaluated and merged, not trained.
        raise MlanError(
            f"model.path {path}: a llava_next model; mlan sft trains llava, llava_onevision and qwen2_5_vl "
            "models (LLaVA-NeXT folders can be evaluated and merged)"
        )
    if kind == kinds.CAUSAL_LM:
        raise MlanError(
            f"model.path {path}: model type {raw.get('model_type')!r} is not LLaVA-style "
            "(expected a LlavaForConditionalGeneration checkpoint, model_type 'llava'; "
            "make one from an LLM and a vision tower with mlan assemble)"
        )
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise MlanError(f"model.path {path}: cannot load the model config ({first_line(e)})") from None
    try:
        processor = load_processor(path, kind, **kwargs)
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
    counter = image_token_counter(processor, kind)
    # Fixed-count kinds (LLaVA-1.5): the processor's expansion, checked against the tower's features.
    image_seq_length = None if counter is not None else _processor_image_tokens(processor, config, token_id)
    expected = _model_image_features(config) if counter is None else None
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
    template, source = _training_template(recipe, processor, path, kind)
    saved = template
    if recipe.training.chat_template == "plain":
        if counter is not None:
            raise MlanError(
                f"training.chat_template plain: LLaVA's stage-1 format is for llava models; a {kind} model "
                "trains in its own chat template (set chat_template: auto)"
            )
        template, source = PLAIN_TEMPLATE, "plain"
    min_row = _min_image_row(processor, template, _smallest_image(counter, image_seq_length))
    # Whether max_length fits an image row is checked once the mixture is known (check_image_row_length).
    return ModelInfo(
        path, processor, config, token_id, image_seq_length, template, source, min_row, saved, kind, counter
    )


def check_image_row_length(recipe: SFTRecipe, info: ModelInfo, mixture, manifest: dict[str, Any] | None) -> None:
    """`training.max_length` must fit one image row when the mixture trains on image rows (or when that is
    unknown); a language-only mixture may train with a max_length shorter than one image."""
    if recipe.training.max_length >= info.min_image_row or not _has_image_rows(mixture, manifest):
        return
    raise MlanError(
        f"training.max_length {recipe.training.max_length}: shorter than one image row "
        f"({info.min_image_row} tokens, {_smallest_image(info.image_counter, info.image_seq_length)} of them image tokens)"
    )


def _has_image_rows(mixture, manifest: dict[str, Any] | None) -> bool:
    """Whether the train split holds an image row: read from its `images` column (list lengths, nothing
    decoded), else its `modality` column, else the manifest's counts; True when none of them tells."""
    try:
        import pyarrow.compute as pc

        ds = mixture["train"]
        if "images" in ds.column_names:
            table = ds.flatten_indices().data if ds._indices is not None else ds.data
            lengths = pc.list_value_length(table.column("images")).fill_null(0)
            return bool(pc.max(lengths).as_py() or 0)
        if "modality" in ds.column_names:
            return "vision" in ds.unique("modality")
    except Exception:  # an unexpected layout: keep the check
        return True
    examples = ((manifest or {}).get("modalities") or {}).get("vision", {}).get("examples")
    return examples is None or examples > 0


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


# LLaVA's stage-1 ("plain") format: the image, then the caption and the separator "\n"; the human turn's
# text is dropped and only the caption is learned (haotian-liu/LLaVA llava/train/train.py
# `preprocess_plain`, conv_llava_plain in llava/conversation.py: sep "\n"). BOS comes first as there.
PLAIN_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is not string -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>' }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}{% generation %}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}{{ part['text'] }}{%- endfor -%}{%- endif -%}"
    "{{ '\n' }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _training_template(recipe: SFTRecipe, processor, path: str, kind: str = kinds.LLAVA) -> tuple[str, str]:
    """The chat template to train with: the model's own when it marks assistant turns for the loss, or
    TRL's marked variant of it (Qwen2.5-VL's); otherwise, for a LLaVA, mlan's Vicuna-v1 template (the
    format MLAN trains in), which is then saved with the model. LLaVA-OneVision and Qwen2.5-VL keep their
    own template: their image placeholders and turns are their own."""
    own = processor.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if own and (not recipe.training.assistant_only_loss or GENERATION_MARKER.search(own)):
        return own, "model"
    marked = training_template(processor) if own else None
    if marked is not None:
        return marked, "model (TRL's training variant)"
    if kind in kinds.QWEN2_LM_KINDS:
        raise MlanError(
            f"model.path {path}: its chat template has no {{% generation %}} markers for assistant-only loss, "
            "and TRL knows no training variant of it; set training.assistant_only_loss false or give the "
            "processor a marked template"
        )
    # Real Llama checkpoints expect <s> first; TRL's collator tokenizes without special tokens.
    log.warning(
        "%s: chat template %s; training with mlan's Vicuna-v1 template (USER: ... ASSISTANT: ...)",
        path,
        "missing" if not own else "has no {% generation %} markers for assistant-only loss",
    )
    return "{{- bos_token -}}" + CHAT_TEMPLATE, "vicuna_v1"


def _smallest_image(counter, image_seq_length: int | None) -> int:
    """Tokens of the smallest image: the fixed count, or the counter's for a 1 x 1 image."""
    return counter([(1, 1)]) if counter is not None else image_seq_length


def _min_image_row(processor, template: str, image_seq_length: int) -> int:
    """Tokens of the shortest possible image row: one image, a one-letter question and answer."""
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
    ]
    text = processor.apply_chat_template(msgs, chat_template=template, tokenize=False)
    return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"]) + image_seq_length - 1


def check_lora_targets_on_meta(recipe: SFTRecipe, info: ModelInfo) -> int:
    """Match the LoRA targets on a weightless copy of the model, before anything is loaded."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        meta = info.model_class(info.config)
    return len(check_lora_targets(meta, recipe.train.lora.target_modules))


def check_extra(extra: dict[str, Any], managed: dict[str, str]) -> None:
    """`training.extra` keys must be SFTConfig fields that the recipe does not already set
    (`managed`: SFTConfig field -> the recipe field that sets it)."""
    from trl import SFTConfig

    valid = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in extra:
        if key in managed:
            raise MlanError(f"training.extra.{key}: set {managed[key]} instead")
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

    if info.kind not in (kinds.LLAVA, kinds.WINGS):
        raise MlanError(f"wings: Wings' learners are built for LLaVA models (llava), not a {info.kind} model")
    # mlan.wings imports torch: not at the top of this light module.
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
