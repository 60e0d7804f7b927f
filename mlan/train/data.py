"""The training rows: loading a mixture folder, exact row lengths, dropping over-long rows.

TRL tokenizes vision rows only in its collator, batch by batch, and truncating there would cut
image tokens (the forward then fails on a feature/token count mismatch). So every row's length
is computed up front, exactly as the collator will see it, and rows over `max_length` are left
out and counted instead. Wings stage 1 trains on the image rows only.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlan.config.recipe import SFTRecipe
from mlan.errors import MlanError, first_line
from mlan.paths import shipped_dir
from mlan.runs import mixture_dir as default_dir
from mlan.train.model_info import ModelInfo

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("messages", "images")


@dataclass
class PreparedSplit:
    """A split with the over-long rows removed, and what the sampler needs to know per row."""

    dataset: Any
    lengths: list[int]
    has_image: list[bool]
    kept: dict[str, int]
    dropped: dict[str, int]


def _build_hint(mixture_dir: Path) -> str:
    """The command that builds a missing mixture folder: the shipped spec of the same name when
    the folder is a default location (`runs/mixtures/<name>`), else the general form."""
    name = mixture_dir.name
    if mixture_dir == default_dir(name) and (shipped_dir("data_mixtures") / f"{name}.yaml").is_file():
        command = "mlan build-mixture" if name == "mlan_released" else f"mlan build-mixture data_mixtures/{name}.yaml"
        return f"build it with `{command}`"
    return f"build it with `mlan build-mixture SPEC --out {mixture_dir}`"


def load_mixture(mixture_dir: Path) -> tuple[Any, dict[str, Any] | None]:
    """The mixture's DatasetDict and its manifest (None when the folder has none)."""
    from datasets import DatasetDict, load_from_disk

    if not mixture_dir.is_dir():
        raise MlanError(f"data.mixture {mixture_dir}: folder not found ({_build_hint(mixture_dir)})")
    try:
        dd = load_from_disk(str(mixture_dir))
    except (FileNotFoundError, ValueError) as e:
        raise MlanError(f"data.mixture {mixture_dir}: not a saved dataset ({first_line(e)})") from None
    if not isinstance(dd, DatasetDict) or "train" not in dd:
        raise MlanError(f"data.mixture {mixture_dir}: expected a DatasetDict with a 'train' split")
    missing = [c for c in REQUIRED_COLUMNS if c not in dd["train"].column_names]
    if missing:
        raise MlanError(f"data.mixture {mixture_dir}: train split lacks column(s) {', '.join(missing)}")
    if len(dd["train"]) == 0:
        raise MlanError(f"data.mixture {mixture_dir}: train split is empty")
    manifest_path = mixture_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    return dd, manifest


def image_counts(ds) -> list[int]:
    """Images per row, read from the Arrow list offsets so that no image is decoded or even loaded."""
    import pyarrow.compute as pc

    table = ds.flatten_indices().data if ds._indices is not None else ds.data
    return pc.list_value_length(table.column("images")).fill_null(0).to_pylist()


def image_sizes(ds, square: bool = False) -> list[list[tuple[int, int]]]:
    """Each row's images as (height, width), read from the image files' headers (nothing is decoded);
    `square`: as `image_aspect_ratio: pad` makes them (the longer side both ways)."""
    from datasets import Image, Sequence
    from PIL import Image as PILImage

    raw = ds.select_columns(["images"]).cast_column("images", Sequence(Image(decode=False)))
    out = []
    for row in raw:
        sizes = []
        for im in row["images"] or []:
            with PILImage.open(io.BytesIO(im["bytes"]) if im.get("bytes") else im["path"]) as f:
                w, h = f.size
            sizes.append((max(h, w), max(h, w)) if square else (h, w))
        out.append(sizes)
    return out


def row_lengths(
    ds, processor, chat_template: str, image_tokens, batch_size: int = 1000, square: bool = False
) -> tuple[list[int], list[int]]:
    """(tokens per row as the collator will produce them, images per row).

    The collator renders the chat template, expands each image placeholder into the image's tokens and
    tokenizes without special tokens; here the same text is rendered with one placeholder per image and
    the expansion is added arithmetically, which avoids decoding images. `image_tokens`: the tokens of
    one image when the model's count is fixed (LLaVA-1.5), else a function from a row's image sizes to
    its image tokens (mlan.families.image_token_counter; the sizes come from the files' headers, squared
    when `square`).
    """
    from trl.data_utils import prepare_multimodal_messages

    counts = image_counts(ds)
    if callable(image_tokens):
        # A row's image tokens, less the one placeholder per image the rendered text already holds.
        extra = [image_tokens(sizes) - len(sizes) for sizes in image_sizes(ds, square)]
    else:
        extra = [n * (image_tokens - 1) for n in counts]
    lengths: list[int] = []
    tokenizer = processor.tokenizer
    messages_only = ds.select_columns(["messages"])
    for start in range(0, len(ds), batch_size):
        rows = messages_only[start : start + batch_size]["messages"]
        convs = [prepare_multimodal_messages(msgs, images=[None] * counts[start + i]) for i, msgs in enumerate(rows)]
        texts = processor.apply_chat_template(convs, chat_template=chat_template, tokenize=False)
        # verbose=False: rows longer than the tokenizer's model_max_length are expected here (they are dropped).
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        lengths.extend(len(x) + extra[start + i] for i, x in enumerate(ids))
        if len(ds) > 20 * batch_size and (start // batch_size) % 20 == 0:
            log.info("measured %d / %d rows", start + len(rows), len(ds))
    return lengths, counts


def prepare_split(
    ds, processor, chat_template: str, image_tokens, max_length: int, name: str, square: bool = False
) -> PreparedSplit:
    """Measure every row and drop those longer than `max_length` (counted by modality); `image_tokens`
    and `square` as `row_lengths` takes them."""
    lengths, counts = row_lengths(ds, processor, chat_template, image_tokens, square=square)
    keep = [i for i, n in enumerate(lengths) if n <= max_length]
    dropped = {"language": 0, "vision": 0}
    for i, n in enumerate(lengths):
        if n > max_length:
            dropped["vision" if counts[i] else "language"] += 1
    if len(keep) < len(lengths):
        log.warning(
            "%s: dropped %d language and %d vision rows longer than max_length %d (never truncated through images)",
            name,
            dropped["language"],
            dropped["vision"],
            max_length,
        )
        ds = ds.select(keep)
    has_image = [counts[i] > 0 for i in keep]
    kept = {"language": has_image.count(False), "vision": has_image.count(True)}
    return PreparedSplit(ds, [lengths[i] for i in keep], has_image, kept, dropped)


def training_rows(
    recipe: SFTRecipe, mixture, mixture_dir: Path, info: ModelInfo
) -> tuple[PreparedSplit, PreparedSplit | None]:
    """The train rows and, when the recipe evaluates at the end, the validation rows: measured exactly,
    over-long ones dropped and counted; for Wings stage 1, image rows only."""
    max_length = recipe.training.max_length
    tokens, square = info.image_tokens, recipe.data.image_aspect_ratio == "pad"
    train = prepare_split(mixture["train"], info.processor, info.chat_template, tokens, max_length, "train", square)
    if len(train.dataset) == 0:
        raise MlanError(f"data.mixture {mixture_dir}: every train row is longer than max_length {max_length}")
    val = None
    if recipe.data.eval_at_end and "validation" in mixture and len(mixture["validation"]):
        val = prepare_split(
            mixture["validation"], info.processor, info.chat_template, tokens, max_length, "validation", square
        )
        if len(val.dataset) == 0:
            val = None
    if recipe.wings is not None and recipe.wings.stage == 1:
        train = image_rows_only(train, mixture_dir, "train")
        val = image_rows_only(val, mixture_dir, "validation") if val is not None else None
    log.info(
        "train rows: %d language, %d vision (dropped as too long: %d language, %d vision)",
        train.kept["language"],
        train.kept["vision"],
        train.dropped["language"],
        train.dropped["vision"],
    )
    return train, val


def image_rows_only(split, mixture_dir: Path, name: str):
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
    return replace(
        split,
        dataset=split.dataset.select(keep),
        lengths=[split.lengths[i] for i in keep],
        has_image=[True] * len(keep),
        kept={"language": 0, "vision": len(keep)},
    )
