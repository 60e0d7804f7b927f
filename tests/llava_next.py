"""A tiny LLaVA-NeXT (LLaVA-1.6) folder, built from config with the real config fields and processor
settings of `llava-hf/llava-v1.6-mistral-7b-hf`.

Source of the fields (copied here so the tests need nothing beside the repository): the printout of
that repo's `LlavaNextProcessor` in ../shared/reference/llava_formats/printouts/DeepHallu_docs_llava_next.md
(image_grid_pinpoints, do_pad, aspect_ratio_setting "anyres", patch_size 14, num_additional_image_tokens 1,
vision_feature_select_strategy "default", image token `<image>`, pad `<pad>`), and transformers'
convert_llava_next_weights_to_hf.py (use_image_newline_parameter: an `image_newline` tensor). The grid
points are the real ones scaled from the 336-pixel tower to the tiny tower's image size.
"""

from __future__ import annotations

from pathlib import Path

# llava-hf/llava-v1.6-mistral-7b-hf's image_grid_pinpoints, in units of its 336-pixel tower.
REAL_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
REAL_IMAGE_SIZE = 336


def save_tiny_llava_next(out: Path, seed: int = 0) -> Path:
    """Build a tiny `LlavaNextForConditionalGeneration` + `LlavaNextProcessor` and save them to `out`."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    from mlan.tiny import IMAGE_TOKEN, build_tiny_llava

    llava, processor = build_tiny_llava(seed=seed)
    size = llava.config.vision_config.image_size
    pinpoints = [[h * size // REAL_IMAGE_SIZE, w * size // REAL_IMAGE_SIZE] for h, w in REAL_GRID_PINPOINTS]
    tok = processor.tokenizer
    config = LlavaNextConfig(
        text_config=llava.config.text_config.to_dict(),
        vision_config=llava.config.vision_config.to_dict(),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tok, key))
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
        do_pad=True,
    )
    next_processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=llava.config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=processor.chat_template,
    )
    model.save_pretrained(out)
    next_processor.save_pretrained(out)
    return out
