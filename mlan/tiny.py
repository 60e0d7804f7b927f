"""A real, tiny LLaVA model built offline: Llama text model + CLIP vision tower + projector,
with a byte-level BPE tokenizer trained locally on the bundled data and a Vicuna-v1 chat
template. Tests, the quickstart and benchmarks use it so that nothing ever reaches a hub.

Why hand-built: no hub is reachable here and transformers ships no ready-made tiny LLaVA
with a processor; every piece below is a stock transformers/tokenizers class, only sized down.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mlan.errors import MlanError
from mlan.io import atomic_dir
from mlan.paths import BUNDLED_DATA_DIR

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


# Vicuna-v1 ("USER: ... ASSISTANT: ...</s>"), the format MLAN trains and evaluates in. Content
# may be a string or a list of parts ({"type": "image"} / {"type": "text"}); an image part
# renders as "<image>\n" ahead of the text. The assistant reply and its end-of-turn token sit
# inside {% generation %} so that assistant-only loss masks everything else.
def vicuna_chat_template(system: str = VICUNA_SYSTEM) -> str:
    """The Vicuna-v1 chat template with `system` as the default system prompt ("" for none)."""
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set system = render(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}"
        "{%- set system = '" + system.replace("'", "\\'") + "' -%}{%- set loop_messages = messages -%}"
        "{%- endif -%}"
        "{{ system }}"
        "{%- for message in loop_messages -%}"
        "{%- if message['role'] == 'user' -%}{{ ' USER: ' }}{{ render(message['content']) }}"
        "{%- elif message['role'] == 'assistant' -%}{{ ' ASSISTANT:' }}"
        "{% generation %}{{ ' ' }}{{ render(message['content']) }}{{ eos_token }}{% endgeneration %}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
    )


CHAT_TEMPLATE = vicuna_chat_template()


@dataclass(frozen=True)
class TinySize:
    """Shape of one tiny model size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int = 32
    patch_size: int = 8
    vision_intermediate: int | None = None  # default 4 x vision_hidden


SIZES: dict[str, TinySize] = {
    # ~0.4M parameters: unit tests, seconds per training step on one CPU core.
    "tiny": TinySize(
        hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vision_hidden=32, vision_layers=2, vision_heads=2
    ),
    # ~2.5M parameters: the quickstart and benchmarks, still CPU-friendly.
    "small": TinySize(
        hidden=192, layers=4, heads=6, kv_heads=2, intermediate=512, vision_hidden=64, vision_layers=2, vision_heads=4
    ),
    # ~21M parameters: closer to real shapes for throughput and merge measurements.
    # The lab's model (as in the prototype that showed the three effects): 2 x 128 Llama,
    # 2 x 64 CLIP with patch 8 (16 image tokens; patch 16 with 4 tokens was too weak).
    "lab": TinySize(
        hidden=128,
        layers=2,
        heads=4,
        kv_heads=4,
        intermediate=384,
        vision_hidden=64,
        vision_layers=2,
        vision_heads=4,
        vision_intermediate=128,
    ),
    "base": TinySize(
        hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1408, vision_hidden=128, vision_layers=4, vision_heads=4
    ),
}
VOCAB_SIZE = 2048


# Bundled slices kept out of the tokenizer's corpus: POPE (added for the tests) is mostly COCO
# file names, which would reshape the tiny vocabulary and so every tiny model built before it.
_NOT_IN_CORPUS = {"pope_coco"}


def _corpus() -> list[str]:
    """Text for training the tokenizer: the bundled data slices, in a fixed file order."""
    texts = [VICUNA_SYSTEM, "USER: ASSISTANT: The best answer is A B C D E yes no"]
    for f in sorted(BUNDLED_DATA_DIR.glob("*/*.jsonl")):
        if f.parent.name in _NOT_IN_CORPUS:
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            texts.extend(_strings(json.loads(line)))
    return texts


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _prepend_bos(tok) -> None:
    """`<s>` in front of every encoded text, as Llama's tokenizer does."""
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )


def _llama_style(tok, model_max_length: int, chat_template: str):
    """Wrap a `tokenizers.Tokenizer` Llama-style: `<s>` prepended on encoding, left padding,
    `<image>` as the image token, the given chat template."""
    from transformers import PreTrainedTokenizerFast

    _prepend_bos(tok)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=model_max_length,
        chat_template=chat_template,
    )


def _trained_bpe(vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE `tokenizers.Tokenizer` trained on the bundled text (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on the bundled text (deterministic), Llama-style:
    `<s>` is prepended on encoding, `<image>` is a special token."""
    tok = _trained_bpe(vocab_size, SPECIAL_TOKENS)
    return _llama_style(tok, model_max_length=2048, chat_template=CHAT_TEMPLATE)


def build_word_tokenizer(words: list[str], chat_template: str | None = None):
    """A word-level tokenizer over a closed vocabulary (the lab's toy world): one token per
    whitespace-separated word, `<s>` prepended, `<image>` special. Unknown words map to `<unk>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chat_words = ["USER:", "ASSISTANT:"]
    vocab = {
        t: i
        for i, t in enumerate(
            SPECIAL_TOKENS + [w for w in dict.fromkeys(chat_words + words) if w not in SPECIAL_TOKENS]
        )
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: the tokenizers library then joins words with single spaces, as written.
    return _llama_style(tok, model_max_length=512, chat_template=chat_template or vicuna_chat_template(system=""))


def build_tiny_llava(size: str = "tiny", seed: int = 0, tokenizer=None):
    """Build (model, processor) in memory: a real LlavaForConditionalGeneration and LlavaProcessor.

    `tokenizer` defaults to the byte-level BPE trained on the bundled data; the lab passes
    its word-level tokenizer. The processor's chat template is the tokenizer's.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if size not in SIZES:
        raise MlanError(f"--size {size!r}: expected one of {', '.join(SIZES)}")
    s = SIZES[size]
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": s.image_size},
        crop_size={"height": s.image_size, "width": s.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=s.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=tokenizer.chat_template,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate or s.vision_hidden * 4,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        projection_dim=s.vision_hidden,
    )
    config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


def save_tiny_llava(
    out: str | Path, size: str = "tiny", seed: int = 0, overwrite: bool = False, tokenizer=None
) -> Path:
    """Build a tiny LLaVA and save it as an ordinary Hugging Face folder (model + processor)."""
    model, processor = build_tiny_llava(size, seed, tokenizer=tokenizer)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    n = sum(p.numel() for p in model.parameters())
    log.info("tiny LLaVA (%s, %d parameters) written to %s", size, n, out)
    return Path(out)


def build_llm_tokenizer(vocab_size: int = 1984):
    """The tiny BPE as a plain Llama/Vicuna LLM ships its tokenizer, for building checkpoints in
    other layouts (`mlan assemble`/`mlan convert` tests): `<s>` prepended, no `<image>` and no
    `<pad>` (Llama has neither; LLaVA pads with `<unk>`), right padding. 1984 = 31 x 64 rows, so
    adding `<image>` and `<pad>` grows the vocabulary to the next multiple of 64, as 32000 -> 32064."""
    from transformers import PreTrainedTokenizerFast

    tok = _trained_bpe(vocab_size, ["<unk>", "<s>", "</s>"])
    _prepend_bos(tok)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
        model_max_length=2048,
    )
