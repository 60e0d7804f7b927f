"""Loading models the way every stage needs them: a LLaVA(-NeXT) or Wings folder, or a plain causal LM,
by path or hub id (which kind a folder is, and the class that opens it, come from `mlan.kinds`).

Shared by evaluation, merging and training. The two kinds of model a user compares are a
LLaVA-style multimodal model (`LlavaForConditionalGeneration` or `LlavaNextForConditionalGeneration`
+ processor) and the original text-only LLM (`AutoModelForCausalLM` + tokenizer). `extract_language_model` turns the first
into the second (the LLaVA's own language model and head, sharing the tensors), so both are
measured the same way on text.

All checks that a user can fail (missing folder, no weights, no processor) happen before
any weights are read and raise `MlanError` with one line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.errors import MlanError
from mlan.io import atomic_dir

log = logging.getLogger(__name__)

MIXTURE_MANIFEST = "mixture_manifest.json"


@dataclass
class LoadedModel:
    """A model ready for inference, with what is needed to feed it.

    `model` is a `LlavaForConditionalGeneration` when `multimodal` is true, otherwise a causal LM.
    `processor` is the LLaVA processor (None for a text-only model); `tokenizer` is always set.
    """

    name: str
    model: Any
    tokenizer: Any
    processor: Any | None = None
    multimodal: bool = False
    path: Path | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def device(self):
        """The device of the model's first parameter."""
        return next(self.model.parameters()).device


def read_mixture_manifest(path: str | Path) -> dict:
    """The copy of the training mixture's manifest in a model folder, or {} if there is none."""
    f = Path(path).expanduser() / MIXTURE_MANIFEST
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MlanError(f"{f}: invalid JSON ({e})") from None


def load_model(
    name_or_path: str | Path,
    *,
    device: str | None = None,
    dtype: str | None = "auto",
    text_only: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load a LLaVA folder (model + processor) or a plain causal LM (model + tokenizer), in eval mode.

    With `text_only=True` a LLaVA model is reduced to its language model
    (`extract_language_model`), whose text logits equal the LLaVA's. A Wings folder
    (`mlan.wings.is_wings_dir`) opens with its learners (`mlan.wings.load_wings_model`); it has
    no text-only form, since its learners sit inside the language model's layers. `device_map` (auto,
    balanced, ...) spreads the model over this machine's GPUs with accelerate instead of moving it to
    `device` (a model larger than one GPU).
    """
    import torch
    from transformers import AutoTokenizer

    from mlan.families import load_processor

    device = device or kinds.default_device()
    folder = kinds.local_folder(name_or_path)
    kinds.check_model_dir(name_or_path)
    kind = kinds.kind_of(kinds.read_model_config(name_or_path), folder, name_or_path)
    if kind == kinds.ORIGINAL_LLAVA:
        raise kinds.original_layout_error(name_or_path)
    src = str(folder) if folder is not None else str(name_or_path)
    torch_dtype = kinds.resolve_dtype(dtype, device)
    multimodal = kind in kinds.MULTIMODAL_KINDS
    if kind == kinds.WINGS and text_only:
        raise MlanError(
            f"{name_or_path}: a Wings model has no text-only form (its learners need the LLaVA model around them); "
            "load it whole"
        )
    if kind == kinds.WINGS and device_map is not None:
        raise MlanError(
            f"{name_or_path}: device_map {device_map} is not supported for a Wings model; load it on one device"
        )
    if kind == kinds.WINGS:
        from mlan.wings.io import read_wings_config

        read_wings_config(src)  # a broken wings_config.json: its one line, before "loading" is said
    log.info("loading %s (%s) on %s", name_or_path, kind, device if device_map is None else f"device_map {device_map}")
    if kind == kinds.WINGS:
        # Imported here: mlan.wings loads torch, and this module is imported by light CLI paths.
        from mlan.wings import load_wings_model

        # Loaded on the CPU first so that the fp16 -> fp32 step below sees it before any move.
        model, processor = load_wings_model(src, device="cpu", dtype=dtype)
        tokenizer = processor.tokenizer
    elif multimodal:
        model = kinds.model_class(kind).from_pretrained(src, dtype=torch_dtype, device_map=device_map)
        processor = load_processor(src, kind)
        tokenizer = processor.tokenizer
    else:
        model = kinds.model_class(kind).from_pretrained(src, dtype=torch_dtype, device_map=device_map)
        processor = None
        tokenizer = AutoTokenizer.from_pretrained(src)
    if device_map is not None:
        model = model.eval()  # accelerate placed it; inputs go to its first device (LoadedModel.device)
    else:
        if device == "cpu" and model.dtype == torch.float16:
            model = model.float()
        model = model.to(device).eval()
    if tokenizer.pad_token is None:
        # Batched generation needs a pad token; Llama tokenizers ship none.
        tokenizer.pad_token = tokenizer.eos_token
    loaded = LoadedModel(
        name=str(name_or_path),
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        multimodal=multimodal,
        path=folder,
        manifest=read_mixture_manifest(folder) if folder is not None else {},
    )
    if multimodal and text_only:
        loaded.model = extract_language_model(model)
        loaded.processor = None
        loaded.multimodal = False
    return loaded


def extract_language_model(llava) -> Any:
    """The language model of a multimodal model (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL) as a causal
    LM (e.g. `LlamaForCausalLM`, `Qwen2ForCausalLM`).

    The returned model shares its tensors with `llava` (no copy): its decoder is the multimodal model's
    `model.language_model` and its head its `lm_head`, so on text its logits equal the multimodal
    model's exactly. Save it with `save_pretrained` to get an ordinary LLM folder.
    """
    from transformers import AutoModelForCausalLM

    from mlan.families import causal_lm_config

    text_config = causal_lm_config(llava.config.model_type, llava.config)
    # Building on the meta device avoids allocating (and randomly initialising) weights that
    # are replaced at once by the LLaVA's own modules.
    import torch

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    lm.model = llava.model.language_model
    lm.lm_head = llava.lm_head
    lm.generation_config = llava.generation_config
    lm.to(dtype=llava.dtype)
    return lm.eval()


def save_language_model(llava_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the language model of a LLaVA folder as a plain causal-LM folder (weights + tokenizer)."""
    loaded = load_model(llava_dir, device="cpu", text_only=True)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        # The LLaVA tokenizer's `processor_class` would make AutoProcessor (transformers serve, vLLM) look for
        # an image processor in a folder that is a plain causal LM.
        config = Path(tmp) / "tokenizer_config.json"
        if config.is_file():
            cfg = json.loads(config.read_text(encoding="utf-8"))
            if cfg.pop("processor_class", None) is not None:
                config.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(out)
