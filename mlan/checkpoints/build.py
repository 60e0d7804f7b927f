"""What `assemble` and `convert` share: the CLIP tower, the tokenizer's new tokens, the grown
vocabulary, the projector's shapes, and writing ONE Hugging Face LLaVA folder.

The two commands differ only in where the language-model and projector tensors come from; from
`LlavaParts` on, the folder is built the same way, as transformers' `convert_llava_weights_to_hf.py`
(@ 01080c6, `convert_llava_llama_to_hf`) builds llava-hf/llava-1.5-7b-hf: `<image>` added as a
special token, `<pad>` as the pad token, embeddings grown by 2 and padded to a multiple of 64, the
model built on the meta device and given the tensors (`load_state_dict(assign=True)`), so no
weight is initialised and then thrown away.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan.checkpoints.original import original_name
from mlan.errors import MlanError, first_line
from mlan.hub import require_hub
from mlan.io import atomic_dir
from mlan.kinds import local_folder, read_model_config
from mlan.tiny import IMAGE_TOKEN, vicuna_chat_template

log = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
PAD_TO_MULTIPLE_OF = 64  # the converter's `resize_token_embeddings(vocab_size + 2, 64)`
EMBED = "model.language_model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
PROJECTOR = "model.multi_modal_projector."
VISION = "model.vision_tower."
CLIP_TYPES = ("clip", "clip_vision_model")
DEFAULT_VISION_TOWER = "openai/clip-vit-large-patch14-336"  # LLaVA-1.5's, and MLAN's
HUB_FIX = "pass a local folder instead (download it once where the hub is reachable)"


@dataclass
class Tower:
    """A CLIP vision tower: its config and image processor, and its weights once loaded."""

    label: str  # how messages name it: the option (or config field) and the reference
    src: str
    config: Any
    image_processor: Any
    weights: dict = field(default_factory=dict)


@dataclass
class LlavaParts:
    """Everything one LLaVA folder is made of. `weights` are under transformers 5's in-memory names;
    `origin` says, for error messages, which file and tensor each came from."""

    text_config: Any
    tower: Tower
    weights: dict
    origin: dict[str, str]
    tokenizer: Any
    feature_layer: int
    select_strategy: str
    dtype: Any
    card: dict[str, str]
    command: str
    source: str  # the file (or folder) to name when a tensor is missing
    image_aspect_ratio: str | None = None  # an original checkpoint's flag, kept in the config as LLaVA keeps it


@dataclass(frozen=True)
class BuildResult:
    """What was written: the folder, its size and the facts a user checks first."""

    out: Path
    parameters: int
    image_tokens: int
    vocab_rows: tuple[int, int]
    added_tokens: tuple[str, ...]
    image_token_id: int
    pad_token_id: int
    dtype: str
    vision_from: str
    projector_from: str
    seconds: float


def resolve(ref: str | Path, what: str) -> str:
    """A local folder (as a path string) or a hub id, failing in one line when the hub is out of reach."""
    folder = local_folder(ref, what)
    if folder is not None:
        return str(folder)
    require_hub(str(ref), what, HUB_FIX, model=True)
    return str(ref)


def load_tower(ref: str | Path, *, weights: bool, dtype=None, what: str = "--vision-tower") -> Tower:
    """A CLIP tower (CLIPVisionModel or CLIPModel folder or hub id) with its image processor;
    `what` names where the reference came from in messages."""
    from transformers import AutoImageProcessor, CLIPConfig, CLIPVisionConfig

    src = resolve(ref, what)
    config = read_model_config(src, what=what)
    if config.get("model_type") not in CLIP_TYPES:
        raise MlanError(
            f"{what} {ref}: model_type {config.get('model_type')!r}: expected a CLIP tower ({', '.join(CLIP_TYPES)})"
        )
    if config["model_type"] == "clip":
        vision_config = CLIPConfig.from_pretrained(src).vision_config
    else:
        vision_config = CLIPVisionConfig.from_pretrained(src)
    try:
        image_processor = AutoImageProcessor.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise MlanError(f"{what} {ref}: no image processor (preprocessor_config.json): {first_line(e)}") from None
    tower = Tower(what + " " + str(ref), src, vision_config, image_processor)
    if weights:
        tower.weights = _tower_weights(tower, dtype)
    return tower


def _tower_weights(tower: Tower, dtype) -> dict:
    from transformers import CLIPVisionModel

    try:
        model, info = CLIPVisionModel.from_pretrained(
            tower.src, config=tower.config, dtype=dtype or "auto", output_loading_info=True
        )
    except OSError as e:
        raise MlanError(f"{tower.label}: no readable CLIP weights ({first_line(e)})") from None
    if info["missing_keys"]:
        raise MlanError(f"{tower.label}: missing tensor {sorted(info['missing_keys'])[0]}")
    # LlavaModel.vision_tower is the same CLIPVisionModel class, so its keys are the tower's, prefixed.
    return {VISION + k: v for k, v in model.state_dict().items()}


def vision_keys(vision_config) -> set[str]:
    """The vision tower's tensor names inside a LLaVA model, from a weightless (meta) CLIPVisionModel."""
    import torch
    from transformers import CLIPVisionModel

    with torch.device("meta"):
        return {VISION + k for k in CLIPVisionModel(vision_config).state_dict()}


def image_tokens(tower: Tower, strategy: str) -> int:
    """Tokens per image, as LlavaProcessor expands `<image>`: (image/patch)^2, plus CLS for "full"."""
    crop = tower.image_processor.crop_size
    h, w = (crop["height"], crop["width"]) if crop else (tower.config.image_size,) * 2
    if (h, w) != (tower.config.image_size,) * 2:
        raise MlanError(
            f"{tower.label}: preprocessor_config.json crop_size {h}x{w} but the tower's "
            f"config.json image_size is {tower.config.image_size}"
        )
    patch = tower.config.patch_size
    return (h // patch) * (w // patch) + (0 if strategy == "default" else 1)


def prepare_tokenizer(tokenizer) -> tuple[str, ...]:
    """Add `<image>` (special) and, when the LLM has no pad token of its own, `<pad>`, as llava-hf.

    Llama ships no pad token and LLaVA's v1 recipe pads with `<unk>` (llava/train/train.py
    L894-908), which is "no pad token of its own" too: llava-hf then has `<pad>` = 32001."""
    from transformers import AddedToken

    added = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.unk_token:
        if PAD_TOKEN not in tokenizer.get_vocab():
            added.append(PAD_TOKEN)
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"  # batched generation; llava-hf's tokenizer_config says the same
    tokenizer.chat_template = vicuna_chat_template()
    return tuple(added)


def grow_vocabulary(weights: dict, tokens: int, tied: bool) -> tuple[int, int]:
    """Give every token an embedding and head row: (old rows, new rows).

    Rows grow only when the tokenizer outgrew them, to the next multiple of 64 (32000 + 2 -> 32064,
    as the converter's `resize_token_embeddings(vocab_size + 2, 64)`). Old rows are kept as they
    are (bit for bit); each new row is the mean of the old rows, computed in float32: the centre
    of the distribution the converter and transformers' mean_resizing sample new rows from."""
    import torch

    old = weights[EMBED].shape[0]
    if tokens <= old:
        return old, old
    new = math.ceil(tokens / PAD_TO_MULTIPLE_OF) * PAD_TO_MULTIPLE_OF
    for key in (EMBED,) if tied else (EMBED, LM_HEAD):
        t = weights[key]
        mean = t.float().mean(dim=0, keepdim=True).to(t.dtype)
        weights[key] = torch.cat([t, mean.expand(new - old, -1)], dim=0)
    if tied:
        weights[LM_HEAD] = weights[EMBED]
    return old, new


def fresh_projector(in_dim: int, out_dim: int, seed: int) -> dict:
    """An untrained mlp2x_gelu projector as LLaVA makes one: two `nn.Linear` with torch's default
    init (kaiming-uniform weights, uniform(+-1/sqrt(fan_in)) biases), built after the LLM is loaded
    (llava/model/multimodal_projector/builder.py L33-51), from a seeded generator of its own."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, fan_in in (("linear_1", in_dim), ("linear_2", out_dim)):
        w = torch.empty(out_dim, fan_in)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
        bound = 1 / math.sqrt(fan_in)
        out[f"{PROJECTOR}{name}.weight"] = w
        out[f"{PROJECTOR}{name}.bias"] = torch.empty(out_dim).uniform_(-bound, bound, generator=g)
    return out


def check_projector(weights: dict, origin: dict[str, str], in_dim: int, out_dim: int, what: str) -> None:
    """The projector's shapes against the tower's hidden size (in) and the LLM's (out), before any writing."""
    want = {"linear_1.weight": (out_dim, in_dim), "linear_1.bias": (out_dim,)}
    want |= {"linear_2.weight": (out_dim, out_dim), "linear_2.bias": (out_dim,)}
    for name, shape in want.items():
        t = weights[PROJECTOR + name]
        if tuple(t.shape) != shape:
            raise MlanError(
                f"{origin.get(PROJECTOR + name, PROJECTOR + name)}: shape {list(t.shape)}, expected {list(shape)} "
                f"({what}: vision tower hidden_size {in_dim}, LLM hidden_size {out_dim})"
            )


def _cast(weights: dict, dtype) -> None:
    """Every floating tensor to `dtype`; tensors stored under two names (a tied head) stay one tensor."""
    done: dict[int, object] = {}
    for k, t in weights.items():
        if t.is_floating_point() and t.dtype != dtype:
            if id(t) not in done:
                done[id(t)] = t.to(dtype)
            weights[k] = done[id(t)]


def _match(model, parts: LlavaParts) -> None:
    """Every tensor the LLaVA model has, none it lacks, every shape right: one line naming the first miss."""
    expected = model.state_dict()
    for k, t in parts.weights.items():
        if k not in expected:
            raise MlanError(f"{parts.origin.get(k, k)}: unexpected tensor (no place for it in a LLaVA model)")
        if tuple(t.shape) != tuple(expected[k].shape):
            raise MlanError(f"{parts.origin.get(k, k)}: shape {list(t.shape)}, expected {list(expected[k].shape)}")
    missing = [k for k in expected if k not in parts.weights]
    if missing:
        raise MlanError(f"{parts.source}: missing tensor {original_name(missing[0])}")


def build_model(parts: LlavaParts):
    """(model, processor, result facts) from the parts: checked, nothing written yet."""
    import torch
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = parts.tokenizer
    if EMBED not in parts.weights:
        raise MlanError(f"{parts.source}: missing tensor {original_name(EMBED)}")
    n_image = image_tokens(parts.tower, parts.select_strategy)
    added = prepare_tokenizer(tok)
    tied = bool(getattr(parts.text_config, "tie_word_embeddings", False))
    if LM_HEAD not in parts.weights:
        # A tied LLM stores no head (the 01080c6 converter clones the embedding the same way).
        parts.weights[LM_HEAD] = parts.weights[EMBED]
    rows = grow_vocabulary(parts.weights, len(tok), tied)
    _cast(parts.weights, parts.dtype)
    parts.text_config.vocab_size = rows[1]
    parts.text_config.pad_token_id = tok.pad_token_id
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    config = LlavaConfig(
        text_config=parts.text_config,
        vision_config=parts.tower.config,
        image_token_index=image_id,
        image_seq_length=n_image,
        vision_feature_layer=parts.feature_layer,
        vision_feature_select_strategy=parts.select_strategy,
        projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tied,
    )
    if parts.image_aspect_ratio:
        config.image_aspect_ratio = parts.image_aspect_ratio  # read by evaluation's `image_aspect_ratio: model`
    for c in (config, parts.text_config, parts.tower.config):
        c.dtype = parts.dtype  # one dtype for the whole model, as every tensor was cast above
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    _match(model, parts)
    model.load_state_dict(parts.weights, strict=True, assign=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    processor = LlavaProcessor(
        image_processor=parts.tower.image_processor,
        tokenizer=tok,
        patch_size=parts.tower.config.patch_size,
        vision_feature_select_strategy=parts.select_strategy,
        num_additional_image_tokens=1,  # CLIP's CLS; "default" drops it again: (336/14)^2 = 576
        chat_template=vicuna_chat_template(),
    )
    facts = {"image_tokens": n_image, "rows": rows, "added": added, "image_id": image_id}
    return model, processor, facts


def write_llava(parts: LlavaParts, out: str | Path, *, overwrite: bool, started: float) -> BuildResult:
    """Build the model and write the folder (weights, config, processor, template, model card) atomically."""
    import torch

    model, processor, facts = build_model(parts)
    params = {p.data_ptr(): p.numel() for p in model.parameters()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size="5GB")
        processor.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(parts, facts, Path(out).name), encoding="utf-8")
    log.info("LLaVA folder written to %s", out)
    return BuildResult(
        out=Path(out),
        parameters=sum(params.values()),
        image_tokens=facts["image_tokens"],
        vocab_rows=facts["rows"],
        added_tokens=facts["added"],
        image_token_id=facts["image_id"],
        pad_token_id=parts.tokenizer.pad_token_id,
        dtype=str(parts.dtype).removeprefix("torch.") if isinstance(parts.dtype, torch.dtype) else str(parts.dtype),
        vision_from=parts.card["vision tower weights"],
        projector_from=parts.card["projector"],
        seconds=time.monotonic() - started,
    )


def model_card(parts: LlavaParts, facts: dict, name: str) -> str:
    """README.md: what the folder was built from and how it was put together (no dates: rebuilds are byte-stable)."""
    old, new = facts["rows"]
    rows = list(parts.card.items())
    rows += [("vision feature layer", f"{parts.feature_layer} (strategy {parts.select_strategy!r})")]
    rows += [("image tokens", f"{facts['image_tokens']} per image (`<image>` = id {facts['image_id']})")]
    grown = f"{old} -> {new} rows; new rows are the mean of the old ones" if new > old else f"{new} rows, unchanged"
    added = ", ".join(f"`{t}`" for t in facts["added"]) or "none"
    rows += [("vocabulary", f"{grown}; added tokens: {added}")]
    rows += [("pad token", f"`{parts.tokenizer.pad_token}` = id {parts.tokenizer.pad_token_id}, left padding")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "---\nlibrary_name: transformers\npipeline_tag: image-text-to-text\ntags:\n- llava\n- mlan\n---\n\n"
        f"# {name}\n\n"
        "A LLaVA-1.5-style model in the Hugging Face format (`LlavaForConditionalGeneration` + "
        f"`LlavaProcessor`), written by `{parts.command}`.\n\n"
        f"| part | source |\n|---|---|\n{table}\n\n"
        "Prompt format: the Vicuna-v1 chat template with its system prompt (`USER: <image>\\n... ASSISTANT:`), "
        "with `{% generation %}` markers around assistant replies for assistant-only loss.\n\n"
        "Images: LLaVA-1.5 and MLAN's stage 2 train with `image_aspect_ratio: pad` (each image padded to a square "
        "with the image-mean colour, then resized and cropped); the CLIP image processor here only resizes and "
        "crops. mlan pads where a recipe's `data.image_aspect_ratio` or a suite's `image_aspect_ratio` says so; "
        f"this folder's config records `image_aspect_ratio: {parts.image_aspect_ratio or 'none'}`.\n"
    )
