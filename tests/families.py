"""Tiny LLaVA-OneVision and Qwen2.5-VL folders, built offline from config with the real config fields and
processor settings of `llava-hf/llava-onevision-qwen2-0.5b-ov-hf` and `Qwen/Qwen2.5-VL-*-Instruct`, sized down.

LLaVA-OneVision: a Qwen2 2 x 64 text model and a SigLIP 2 x 32 tower at 32 px / patch 8 (16 tokens per
tile); image_grid_pinpoints are the real ones (384..2304 in steps of 384) scaled to the tiny tower,
vision_aspect_ratio "anyres_max_9", vision_feature_layer -1, strategy "full", `<image>`/`<video>` after the
Qwen special tokens as in the real added_tokens.json; SigLIP's image processor settings (mean/std 0.5,
bicubic); the chat template of transformers' convert_llava_onevision_weights_to_hf.py, with the closing
`<|im_end|>` inside its `{% generation %}` block and string content accepted.
Qwen2.5-VL: a 2 x 64 text model with M-RoPE (mrope_section summing to head_dim / 2), a 2-block windowed
ViT (patch 7, merge 2: a 56 x 56 image is 16 image tokens), Qwen's special tokens in Qwen's order, the
stock chat template (identical to TRL's chat_templates/qwen2_5_vl.jinja, so TRL swaps in its training
variant with generation markers).
Both tokenizers are mlan.tiny's byte-level BPE trained on the bundled text. The processors are built
without torchvision (mlan.families explains why).
"""

from __future__ import annotations

import json
from pathlib import Path

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf's image_grid_pinpoints, in units of its 384-pixel tower:
# every (h, w) with h, w in {384, 768, ..., 2304} (36 grids).
# Both families' language model at test size: a 2 x 64 Qwen2 (head_dim 16).
TINY_QWEN2 = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)
REAL_IMAGE_SIZE = 384
REAL_GRID_PINPOINTS = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]
VISION_ASPECT_RATIO = "anyres_max_9"

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# Same order as the real added_tokens.json (151643..151647), so here ids 0..4.
ONEVISION_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, VIDEO_TOKEN]

# The real llava-hf OneVision chat template (convert_llava_onevision_weights_to_hf.py), verbatim. Its
# {% generation %} block covers only the assistant text, not the closing <|im_end|>.
REAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The same rendering (identical text for list content), but: string content is accepted too, and the
# assistant's closing <|im_end|> sits inside {% generation %} so assistant-only loss also trains the
# end-of-turn token (the "\n" after it stays masked).
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}"
    "{%- for part in content | selectattr('type', 'equalto', 'image') -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in content | selectattr('type', 'equalto', 'video') -%}{{ '<video>\\n' }}{%- endfor -%}"
    "{%- for part in content | selectattr('type', 'equalto', 'text') -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ render(message['content']) }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "{{ render(message['content']) }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def build_onevision_tokenizer(vocab_size: int = 2048):
    """mlan.tiny's byte-level BPE (trained on the bundled data), Qwen2-style: no BOS is prepended,
    `<|im_end|>` is EOS, `<|endoftext|>` is pad, `<image>`/`<video>` are special, left padding."""
    from transformers import PreTrainedTokenizerFast

    from mlan.tiny import _trained_bpe

    tok = _trained_bpe(vocab_size, ONEVISION_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
        padding_side="left",
        model_max_length=2048,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llava_onevision(seed: int = 0):
    """(model, processor) in memory: a real LlavaOnevisionForConditionalGeneration and LlavaOnevisionProcessor."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tok = build_onevision_tokenizer()
    image_size, patch_size = 32, 8
    pinpoints = [[h * image_size // REAL_IMAGE_SIZE, w * image_size // REAL_IMAGE_SIZE] for h, w in REAL_GRID_PINPOINTS]
    text_config = Qwen2Config(
        vocab_size=len(tok),
        **TINY_QWEN2,
        rope_theta=1000000.0,  # Qwen2-0.5B-Instruct
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,  # the real OV config says false at top level (text_config says true)
    )
    vision_config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        vision_use_head=False,  # as the real tower (last layer and head dropped)
    )
    config = LlavaOnevisionConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tok.convert_tokens_to_ids(VIDEO_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None

    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5, 0.5, 0.5],  # SigLIP's, as google/siglip-so400m-patch14-384
        image_std=[0.5, 0.5, 0.5],
        resample=3,
        do_pad=True,
        do_convert_rgb=True,
    )
    from mlan.families import onevision_processor_class

    processor = onevision_processor_class()(
        image_processor=image_processor,
        tokenizer=tok,
        num_image_tokens=(image_size // patch_size) ** 2,  # 729 = 27^2 for the real one; 16 here
        vision_feature_select_strategy="full",
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def save_tiny_llava_onevision(out: Path, seed: int = 0) -> Path:
    """Build a tiny `LlavaOnevisionForConditionalGeneration` + `LlavaOnevisionProcessor` and save them to `out`."""
    out = Path(out)
    model, processor = build_tiny_llava_onevision(seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


QWEN_VOCAB_SIZE = 2048
# Qwen's order (ids 151643..151656 in the real vocab); the object/box/quad tokens are left out.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template shipped by Qwen/Qwen2.5-VL-*-Instruct (chat_template.json), identical to Qwen2-VL's
# and to trl/chat_templates/qwen2_5_vl.jinja (no trailing newline).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer(vocab_size: int = QWEN_VOCAB_SIZE):
    """Repo BPE (trained on the bundled text) + Qwen special tokens appended at the end."""
    from transformers import PreTrainedTokenizerFast

    from mlan.tiny import _trained_bpe

    tok = _trained_bpe(vocab_size - len(QWEN_SPECIAL_TOKENS), [])
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        padding_side="left",  # batched generate needs left padding; TRL's collator overrides per call
        model_max_length=2048,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def _image_processor(**kw):
    # transformers 5 maps qwen2_5_vl to Qwen2VLImageProcessor (torchvision backend) or
    # Qwen2VLImageProcessorPil (PIL backend); this venv has no torchvision.
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import Qwen2VLImageProcessor as cls
    else:
        from transformers import Qwen2VLImageProcessorPil as cls
    return cls(**kw)


def build_tiny_qwen2_5_vl(seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from mlan.families import allow_qwen_vl_processor_without_torchvision

    allow_qwen_vl_processor_without_torchvision()
    tok = build_qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    patch, merge = 7, 2
    image_processor = _image_processor(
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=merge,
        min_pixels=(patch * merge * 2) ** 2,  # 28x28 -> 4 image tokens at least
        max_pixels=(patch * merge * 4) ** 2,  # 56x56 -> 16 image tokens at most
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=tok.chat_template
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            **TINY_QWEN2,
            rms_norm_eps=1e-6,
            # M-RoPE: (t, h, w) split of the head_dim/2 = 8 rotary frequencies (real 7B: [16, 24, 24] of 64)
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_channels=3,
            patch_size=patch,
            spatial_merge_size=merge,
            temporal_patch_size=2,
            window_size=patch * merge * 4,  # 56 px windows
            fullatt_block_indexes=[1],
            out_hidden_size=64,
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]  # as Qwen's generation_config
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model, processor


def save_tiny_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    """Build the tiny Qwen2.5-VL and save model + processor to `out` (loadable offline with
    AutoProcessor / Qwen2_5_VLForConditionalGeneration.from_pretrained)."""
    out = Path(out)
    model, processor = build_tiny_qwen2_5_vl(seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if getattr(processor, "video_processor", None) is None:
        # Saved without torchvision: no video processor was saved. A transformers with torchvision
        # loads one through AutoVideoProcessor and fails on a folder without its config, so write
        # the config Qwen2VLVideoProcessor would (sizes matching the image processor). UNVERIFIED:
        # no torchvision here to load it with.
        ip = processor.image_processor
        (out / "video_preprocessor_config.json").write_text(
            json.dumps(
                {
                    "video_processor_type": "Qwen2VLVideoProcessor",
                    "processor_class": "Qwen2_5_VLProcessor",
                    "patch_size": ip.patch_size,
                    "temporal_patch_size": ip.temporal_patch_size,
                    "merge_size": ip.merge_size,
                    "size": dict(ip.size),
                    "image_mean": list(ip.image_mean),
                    "image_std": list(ip.image_std),
                },
                indent=2,
            )
            + "\n"
        )
    return out
