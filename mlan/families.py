"""LLaVA-OneVision and Qwen2.5-VL: what opening them takes beyond what `mlan.kinds` records.

- Processors without torchvision. In transformers 5.24 both processors have a `video_processor` slot that
  ProcessorMixin type-checks, None included, against `VideoProcessorMixin`, which the package exports only
  with torchvision (transformers/processing_utils.py:666-668, 1084, 2031-2042); loading goes through
  AutoVideoProcessor, whose video processors need torchvision. mlan runs on the PIL image processors with
  a CPU torch and no torchvision (none exists for it on PyPI), so `load_processor` opens these two
  families with their image and text parts only: LLaVA-OneVision through a subclass without the video slot
  (ProcessorMixin reads its parts from `__init__`'s signature, processing_utils.py:1860-1868), Qwen2.5-VL by
  leaving `video_processor` out of the class's attributes. Images and text work as with the stock
  processor; videos do not. With torchvision installed the stock processors are used unchanged.
- The language model as a causal LM. Both are Qwen2 models: LLaVA-OneVision's `text_config` is a
  Qwen2Config already; Qwen2.5-VL's is a Qwen2.5-VL text config with M-RoPE, which with equal
  temporal/height/width positions (every text token) is exactly 1-D RoPE
  (models/qwen2_5_vl/modeling_qwen2_5_vl.py:530-547), so its Qwen2Config drops `mrope_section` and
  passes `rope_theta` (Qwen2's default differs). On text the extracted Qwen2ForCausalLM gives the
  multimodal model's logits exactly (tests/test_families.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlan import kinds


def _torchvision() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def allow_qwen_vl_processor_without_torchvision() -> None:
    """Qwen2.5-VL's (and Qwen2-VL's) processor without its video part, when torchvision is missing."""
    if _torchvision():
        return
    from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor

    base = ProcessorMixin.get_attributes.__func__

    def get_attributes(cls):
        return [a for a in base(cls) if a != "video_processor"]

    for cls in (Qwen2_5_VLProcessor, Qwen2VLProcessor):
        cls.get_attributes = classmethod(get_attributes)


_ONEVISION_CLASS: list[Any] = []


def onevision_processor_class():
    """LLaVA-OneVision's processor class: the stock one with torchvision, else the stock one without its
    video slot (same token expansion, inherited), registered with AutoProcessor for LLaVA-OneVision configs."""
    from transformers import LlavaOnevisionProcessor

    if _torchvision():
        return LlavaOnevisionProcessor
    if _ONEVISION_CLASS:
        return _ONEVISION_CLASS[0]
    from transformers import AutoProcessor, LlavaOnevisionConfig

    class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
        """LlavaOnevisionProcessor without the video processor (which needs torchvision)."""

        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            num_image_tokens=None,
            vision_feature_select_strategy=None,
            chat_template=None,
            image_token="<image>",
            video_token="<video>",
            vision_aspect_ratio="anyres_max_9",
            **kwargs,
        ):
            super().__init__(
                image_processor=image_processor,
                tokenizer=tokenizer,
                video_processor=None,
                num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy,
                chat_template=chat_template,
                image_token=image_token,
                video_token=video_token,
                vision_aspect_ratio=vision_aspect_ratio,
                **kwargs,
            )

    AutoProcessor.register(LlavaOnevisionConfig, ImageOnlyLlavaOnevisionProcessor, exist_ok=True)
    _ONEVISION_CLASS.append(ImageOnlyLlavaOnevisionProcessor)
    return ImageOnlyLlavaOnevisionProcessor


def load_processor(path: str | Path, kind: str, **kwargs):
    """The processor of a multimodal folder or hub id of `kind` (kwargs: from_pretrained's, e.g. revision)."""
    from transformers import AutoProcessor

    if kind == kinds.LLAVA_ONEVISION:
        return onevision_processor_class().from_pretrained(str(path), **kwargs)
    if kind == kinds.QWEN2_5_VL:
        allow_qwen_vl_processor_without_torchvision()
    return AutoProcessor.from_pretrained(str(path), **kwargs)


def causal_lm_config(kind: str, config):
    """The config of the language model of a multimodal `config` as a causal LM of its own."""
    if kind != kinds.QWEN2_5_VL:
        return config.text_config
    from transformers import Qwen2Config

    tc = config.get_text_config()
    rope = {k: v for k, v in dict(tc.rope_parameters or {}).items() if k not in ("mrope_section", "type")}
    if rope.get("rope_type", "default") == "mrope":
        rope["rope_type"] = "default"
    rope.setdefault("rope_type", "default")
    fields = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "initializer_range",
        "rms_norm_eps",
        "use_cache",
        "use_sliding_window",
        "sliding_window",
        "max_window_layers",
        "layer_types",
        "attention_dropout",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ]
    kw = {f: getattr(tc, f) for f in fields if hasattr(tc, f)}
    kw["use_sliding_window"] = bool(kw.get("use_sliding_window"))
    if kw.get("sliding_window") is None:
        kw.pop("sliding_window", None)
    # The outer config holds the tying (Qwen2.5-VL-3B ties its head, 7B does not).
    tie = bool(getattr(config, "tie_word_embeddings", False))
    return Qwen2Config(**kw, rope_parameters=rope, tie_word_embeddings=tie, architectures=["Qwen2ForCausalLM"])


def image_token_counter(processor, kind: str):
    """For a family whose image-token count varies with the image: a function from one row's image sizes,
    [(height, width), ...], to the tokens its images expand into, as the processor expands them (its own
    `_get_num_multimodal_tokens`, the count vLLM reads too). None for the fixed-count kinds."""
    if kind not in kinds.QWEN2_LM_KINDS:
        return None

    def count(sizes: list[tuple[int, int]]) -> int:
        if not sizes:
            return 0
        if kind == kinds.LLAVA_ONEVISION and len(sizes) > 1:
            # Several images in one row get one tile each, plus a newline token
            # (models/llava_onevision/processing_llava_onevision.py, replace_image_token).
            per = processor.num_image_tokens + 1 - (processor.vision_feature_select_strategy == "default")
            return per * len(sizes)
        return sum(processor._get_num_multimodal_tokens(image_sizes=[list(s) for s in sizes]).num_image_tokens)

    return count


def training_template(processor) -> str | None:
    """TRL's training variant (with `{% generation %}` markers) of a processor's chat template, when TRL
    knows the template (Qwen2.5-VL's stock one: trl/chat_templates/qwen2_5_vl_training.jinja); else None."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        return get_training_chat_template(processor)
    except ValueError:
        return None
