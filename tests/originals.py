"""Tiny checkpoints in the layouts `mlan assemble` and `mlan convert` read: a LLaMA LLM folder, a
CLIP tower folder, an original-layout LLaVA checkpoint (`LlavaLlamaForCausalLM`) and a stage-1
`mm_projector.bin`. Importable by any test (`from originals import ...`).

The original layout's field names and values, key names, file names and tokenizer files are those
of the real liuhaotian/llava-v1.5-7b, copied from ../shared/reference/llava_formats/
original_llava-v1.5-7b/ (config.json, generation_config.json, pytorch_model.bin.index.json,
model.safetensors.index.json, special_tokens_map.json, tokenizer_config.json), with tiny dimensions
in place of the real ones. Tests never read that folder: CI clones only this repository.
"""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path

import torch

# Tiny dimensions in place of LLaMA-7B's 4096 / 11008 / 32 / 32 / 32 and CLIP-L/336's 1024 / 4096 / 24 / 16.
TEXT_DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
TEXT_DIMS |= {"num_attention_heads": 4, "num_key_value_heads": 4}
VISION_DIMS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
VISION_DIMS |= {"image_size": 32, "patch_size": 8, "projection_dim": 32}
VOCAB = 1984  # 31 x 64, as 32000 = 500 x 64: + <image> + <pad> grows it to 2048, as 32000 -> 32064
IMAGE_TOKENS = (32 // 8) ** 2  # (336 / 14)^2 = 576 for the real tower


def original_config(tower: str | Path, **changes) -> dict:
    """config.json of liuhaotian/llava-v1.5-7b (original_llava-v1.5-7b/config.json), every field,
    tiny dimensions and the tower folder in place of the real ones; `changes` override fields and a
    value of None removes one."""
    config = {
        "_name_or_path": "llava-v1.5-7b",
        "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "freeze_mm_mlp_adapter": False,
        "freeze_mm_vision_resampler": False,
        "hidden_act": "silu",
        "hidden_size": TEXT_DIMS["hidden_size"],
        "image_aspect_ratio": "pad",
        "initializer_range": 0.02,
        "intermediate_size": TEXT_DIMS["intermediate_size"],
        "max_length": 4096,
        "max_position_embeddings": 4096,
        "mm_hidden_size": VISION_DIMS["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_resampler_type": None,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(tower),
        "model_type": "llava",
        "num_attention_heads": TEXT_DIMS["num_attention_heads"],
        "num_hidden_layers": TEXT_DIMS["num_hidden_layers"],
        "num_key_value_heads": TEXT_DIMS["num_key_value_heads"],
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.31.0",
        "tune_mm_mlp_adapter": False,
        "tune_mm_vision_resampler": False,
        "unfreeze_mm_vision_tower": False,
        "use_cache": True,
        "use_mm_proj": True,
        "vocab_size": VOCAB,
    }
    config |= changes
    return {k: v for k, v in config.items() if v is not None or k not in changes}


# generation_config.json and special_tokens_map.json of the same checkpoint, verbatim.
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "max_length": 4096, "pad_token_id": 0}
GENERATION_CONFIG |= {"transformers_version": "4.31.0"}
_SPECIAL = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
SPECIAL_TOKENS_MAP = {
    "bos_token": {"content": "<s>", **_SPECIAL},
    "eos_token": {"content": "</s>", **_SPECIAL},
    "pad_token": "<unk>",
    "unk_token": {"content": "<unk>", **_SPECIAL},
}
# tokenizer_config.json of the same checkpoint (a sentencepiece LlamaTokenizer), verbatim.
TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", "content": "<s>", **_SPECIAL},
    "clean_up_tokenization_spaces": False,
    "eos_token": {"__type": "AddedToken", "content": "</s>", **_SPECIAL},
    "legacy": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<unk>", **_SPECIAL},
}


@functools.cache
def _sentencepiece_model() -> bytes:
    """A sentencepiece BPE model (tokenizer.model, as LLaMA's) trained on mlan.tiny's corpus."""
    import sentencepiece as spm

    from mlan.tiny import _corpus

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        vocab_size=VOCAB,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        minloglevel=2,
    )
    return buf.getvalue()


def write_tokenizer(out: Path, kind: str = "sentencepiece") -> None:
    """LLaMA's tokenizer files: `sentencepiece` writes tokenizer.model + tokenizer_config.json +
    special_tokens_map.json (the original checkpoint's file set); `json` writes mlan.tiny's
    LLaMA-style BPE as tokenizer.json + tokenizer_config.json, pad `<unk>` as LLaVA sets it."""
    out.mkdir(parents=True, exist_ok=True)
    if kind == "sentencepiece":
        (out / "tokenizer.model").write_bytes(_sentencepiece_model())
        (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    else:
        from mlan.tiny import build_llm_tokenizer

        build_llm_tokenizer(VOCAB).save_pretrained(out)
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2))


def _llama(seed: int, vocab: int = VOCAB, **changes):
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = {"vocab_size": vocab, "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": 2}
    config = LlamaConfig(**{**fields, **TEXT_DIMS, "tie_word_embeddings": False, **changes})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_llm(out: Path, *, seed: int = 1, tokenizer: str = "sentencepiece", **changes) -> Path:
    """A tiny LLaMA causal-LM folder (fp32) with LLaMA's tokenizer files: the `--llm` of `mlan assemble`,
    the `--original` of `mlan merge`."""
    _llama(seed, **changes).save_pretrained(out)
    write_tokenizer(out, tokenizer)
    return out


def save_clip_tower(out: Path, *, seed: int = 2, full_clip: bool = False, **changes) -> Path:
    """A tiny CLIP tower folder with its CLIPImageProcessor (32 px, patch 8): a CLIPVisionModel, or
    with `full_clip` a whole CLIPModel (text side included), as openai/clip-vit-large-patch14-336 is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    vision = CLIPVisionConfig(**{**VISION_DIMS, **changes})
    torch.manual_seed(seed)
    if full_clip:
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=32))
    else:
        model = CLIPVisionModel(vision)
    model.save_pretrained(out)
    size = vision.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out)
    return out


def projector_tensors(seed: int, in_dim: int, out_dim: int, *, linear: bool = False) -> dict:
    """A projector under LLaVA's key names (model.mm_projector.{0,2}.* for mlp2x_gelu, .weight/.bias for linear), fp16."""
    torch.manual_seed(seed)
    if linear:
        layer = torch.nn.Linear(in_dim, out_dim)
        return {f"model.mm_projector.{k}": v.half() for k, v in layer.state_dict().items()}
    mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, out_dim), torch.nn.GELU(), torch.nn.Linear(out_dim, out_dim))
    return {f"model.mm_projector.{k}": v.half() for k, v in mlp.state_dict().items()}


def save_mm_projector(
    path: Path, *, seed: int = 3, in_dim: int | None = None, out_dim: int | None = None, **kw
) -> Path:
    """A stage-1 `mm_projector.bin`: `torch.save` of the full-name projector keys, as LLaVA writes it."""
    in_dim = in_dim or VISION_DIMS["hidden_size"]
    out_dim = out_dim or TEXT_DIMS["hidden_size"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(projector_tensors(seed, in_dim, out_dim, **kw), path)
    return path


def original_tensors(*, seed: int = 0, tower: Path | None = None) -> dict:
    """The state dict of an original checkpoint: LLaMA under `model.*`/`lm_head.weight` (fp16), the
    rotary `inv_freq` buffers (fp32, as in the real index), the projector, and with `tower` the CLIP
    tower's weights under `model.vision_tower.vision_tower.vision_model.*` (an unfrozen tower)."""
    state = {k: v.half() for k, v in _llama(seed).state_dict().items()}
    head_dim = TEXT_DIMS["hidden_size"] // TEXT_DIMS["num_attention_heads"]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(TEXT_DIMS["num_hidden_layers"]):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    state |= projector_tensors(seed + 100, VISION_DIMS["hidden_size"], TEXT_DIMS["hidden_size"])
    if tower is not None:
        from transformers import CLIPVisionModel

        for k, v in CLIPVisionModel.from_pretrained(tower).state_dict().items():
            state["model.vision_tower.vision_tower.vision_model." + k.removeprefix("vision_model.")] = v.half()
    return state


def _shard(key: str) -> int:
    """As in the real index: embeddings and the first layers in shard 1; later layers, the final norm,
    lm_head and the projector (and here the tower) in shard 2."""
    m = re.match(r"model\.layers\.(\d+)\.", key)
    if m:
        return 1 if int(m.group(1)) < TEXT_DIMS["num_hidden_layers"] // 2 else 2
    return 1 if key == "model.embed_tokens.weight" else 2


def save_original_llava(
    out: Path,
    tower: Path,
    *,
    seed: int = 0,
    fmt: str = "bin",
    tokenizer: str = "sentencepiece",
    state: dict | None = None,
    **config_changes,
) -> Path:
    """A tiny original-layout LLaVA checkpoint folder: config.json (`original_config`), generation
    config, LLaMA tokenizer files and weights as `fmt`: "bin" (pytorch_model-0000{1,2}-of-00002.bin
    + pytorch_model.bin.index.json, the release), "safetensors" (model-0000{1,2}-of-00002.safetensors
    + index, the hub's convertbot variant) or "single" (pytorch_model.bin)."""
    out.mkdir(parents=True, exist_ok=True)
    state = original_tensors(seed=seed) if state is None else state
    (out / "config.json").write_text(json.dumps(original_config(tower, **config_changes), indent=2))
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    write_tokenizer(out, tokenizer)
    if fmt == "single":
        torch.save(state, out / "pytorch_model.bin")
        return out
    stem, ext, index = ("model", "safetensors", "model.safetensors.index.json")
    if fmt == "bin":
        stem, ext, index = ("pytorch_model", "bin", "pytorch_model.bin.index.json")
    names = {i: f"{stem}-0000{i}-of-00002.{ext}" for i in (1, 2)}
    for i, name in names.items():
        part = {k: v for k, v in state.items() if _shard(k) == i}
        if fmt == "bin":
            torch.save(part, out / name)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in part.items()}, str(out / name), metadata={"format": "pt"})
    total = sum(v.numel() * v.element_size() for v in state.values())
    weight_map = {k: names[_shard(k)] for k in sorted(state)}
    (out / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors files, under the names on disk."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def load_llava(folder: Path):
    """`LlavaForConditionalGeneration.from_pretrained`, asserting no missing, unexpected or mismatched key."""
    from transformers import LlavaForConditionalGeneration

    model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


def tower_state(folder: Path) -> dict[str, torch.Tensor]:
    """A CLIP tower folder's vision weights as CLIPVisionModel names them."""
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(folder).state_dict()
