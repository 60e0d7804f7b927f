"""Opening sources: a hub dataset, a local JSONL/JSON/Parquet file or a `save_to_disk` folder,
always as a memory-mapped `datasets.Dataset` (rows are read on demand, never listed in Python).

Image columns are cast to `Image(decode=False)` so images stay as bytes or paths until written.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

from mlan import hub as hf_hub
from mlan.errors import MlanError, first_line
from mlan.paths import BUNDLED_PREFIX, resolve_data_path
from mlan.schemas import LOCAL_SUFFIXES, find_local, open_local

log = logging.getLogger(__name__)


def is_local(ref: str) -> bool:
    """Whether a dataset reference names a local file or folder rather than a hub id."""
    if ref.startswith(BUNDLED_PREFIX) or ref.startswith(("/", ".", "~")):
        return True
    p = Path(ref).expanduser()
    return p.exists() or p.suffix in LOCAL_SUFFIXES


def open_dataset(ref: str, *, config: str | None, split: str, revision: str | None, what: str):
    """Open one split as a `datasets.Dataset`; every failure a user can cause is one `MlanError` line."""
    import datasets

    if is_local(ref):
        ds = open_local(resolve_data_path(ref), split=split, what=what)
    else:
        reason = hf_hub.hub_unreachable_reason()
        if reason:
            raise MlanError(
                f"{what}: the Hugging Face Hub is unreachable ({reason}); point `dataset` at a local "
                "JSONL/Parquet file or save_to_disk folder, or pass --data-dir DIR holding <source name>/<split>.jsonl"
            )
        try:
            ds = datasets.load_dataset(ref, config, split=split, revision=revision)
        except Exception as e:  # unknown id, config or split on the hub: one line with the library's reason
            first = first_line(e)
            raise MlanError(
                f"{what}: cannot load hub dataset {ref!r} (config {config}, split {split}): {first}"
            ) from None
    # Keep images undecoded: bytes/paths stream through to the output without PIL objects in memory.
    for name, feat in ds.features.items():
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def base_folder(ref: str) -> Path | None:
    """The folder a local source's relative image paths are resolved against by default."""
    if not is_local(ref):
        return None
    p = resolve_data_path(ref)
    return p if p.is_dir() else p.parent


def load_image_bytes(value, root: Path | None, check: bool = True) -> tuple[bytes, str]:
    """(bytes, file name) of an image given as a path, a {bytes, path} dict or raw bytes.

    With `check`, the image is decoded at reduced size (JPEG draft mode) to catch truncated or
    non-image files before they reach training. Raises ValueError with the reason.
    """
    name = ""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path") or ""
        if data is None:
            if not name:
                raise ValueError("image has neither bytes nor path")
            data = _read(name, root)
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        name = value
        data = _read(value, root)
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    if check:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (64, 64))
                im.load()
        except Exception as e:
            raise ValueError(f"unreadable image {name or '(bytes)'}: {e}") from None
    return data, Path(name).name if name else hashlib.sha256(data).hexdigest()[:16] + ".img"


def _read(name: str, root: Path | None) -> bytes:
    p = Path(name).expanduser()
    if not p.is_absolute() and root is not None:
        p = root / p
    try:
        return p.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read image {p}: {e.strerror or e}") from None


def with_local_data(spec, data_dir: str | Path):
    """A copy of a mixture spec whose hub datasets point at local copies under `data_dir`.

    The layout mirrors `mlan eval --data-dir`: a source (or contamination set) named `squad`
    reading split `train` becomes `<data_dir>/squad/train.jsonl` (or .json/.parquet, or a
    save_to_disk folder `<data_dir>/squad/train/`) when that exists; image paths in such a file
    are resolved against its folder. Sources without a local copy keep their hub id, so a
    missing one still fails with the one-line hub message.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise MlanError(f"--data-dir {data_dir}: folder not found")
    spec = spec.model_copy(deep=True)
    for src in spec.sources:
        local = None if is_local(src.dataset) else find_local(data_dir / src.name, src.split)
        if local is not None:
            src.dataset, src.config, src.revision, src.image_root = str(local), None, None, None
    for ev in spec.contamination.evals:
        local = None if is_local(ev.dataset) else find_local(data_dir / ev.task, ev.split)
        if local is not None:
            ev.dataset, ev.config, ev.revision = str(local), None, None
    return spec
