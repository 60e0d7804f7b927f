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


def open_dataset(ref: str, *, config: str | None, split: str, revision: str | None, what: str, data_files=None):
    """Open one split as a `datasets.Dataset`; every failure a user can cause is one `MlanError` line.
    `data_files` picks files of a hub repo of loose data files (LLaVA-style JSON files)."""
    import datasets

    if is_local(ref):
        if data_files:
            raise MlanError(f"{what}: data_files is for hub datasets; name the local file itself in `dataset`")
        ds = open_local(resolve_data_path(ref), split=split, what=what)
    else:
        reason = hf_hub.hub_unreachable_reason()
        if reason:
            raise MlanError(
                f"{what}: the Hugging Face Hub is unreachable ({reason}); point `dataset` at a local "
                "JSONL/Parquet file or save_to_disk folder, or pass --data-dir DIR holding <source name>/<split>.jsonl"
            )
        try:
            files = {"data_files": data_files} if data_files else {}
            ds = datasets.load_dataset(ref, config, split=split, revision=revision, **files)
        except Exception as e:  # unknown id, config or split on the hub: one line with the library's reason
            script = hf_hub.script_repo_error(e, ref, what)
            if script is not None:
                raise script from None
            first = first_line(e)
            picked = f", data_files {data_files}" if data_files else ""
            raise MlanError(
                f"{what}: cannot load hub dataset {ref!r} (config {config}, split {split}{picked}): {first}"
            ) from None
    # Keep images undecoded: bytes/paths stream through to the output without PIL objects in memory.
    for name, feat in ds.features.items():
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return _ids_as_text(ds)


def _ids_as_text(ds):
    """The `id` column as text when the loader stored it as JSON because rows mix text and number ids.

    LLaVA's llava_v1_5_mix665k.json does (haotian-liu/LLaVA#981, modelscope/ms-swift#2634). datasets
    keeps such a column as JSON text but stores a string that itself parses as JSON unquoted, so
    decoding turns the id "000000033471" into the number 33471. The stored text is the id as written,
    except for strings stored quoted, which are decoded.
    """
    import json

    import datasets

    if not isinstance(ds.features.get("id"), datasets.Json):
        return ds
    stored = ds.data.column("id").to_pylist()
    ids = [v if v is None or not v.startswith('"') else json.loads(v) for v in stored]
    return ds.remove_columns("id").add_column("id", ids, feature=datasets.Value("string"))


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
    save_to_disk folder `<data_dir>/squad/train/`) when that exists; a source picking one hub file
    (`data_files: MLAN_80k.json`) may also keep that name (`<data_dir>/<name>/MLAN_80k.json`). Image
    paths in such a file are resolved against the source's `image_root` when set, else the file's
    folder. Sources without a local copy keep their hub id, so a missing one still fails with the
    one-line hub message.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise MlanError(f"--data-dir {data_dir}: folder not found")
    spec = spec.model_copy(deep=True)
    for src in spec.sources:
        local = None if is_local(src.dataset) else _local_copy(data_dir / src.name, src.split, src.data_files)
        if local is not None:
            # image_root is kept: a hub source sets it only when its rows hold paths into a separate
            # image folder (LLaVA-style data), and the local copy's rows hold the same paths.
            src.dataset, src.config, src.revision, src.data_files = str(local), None, None, None
    for ev in spec.contamination.evals:
        local = None if is_local(ev.dataset) else find_local(data_dir / ev.task, ev.split)
        if local is not None:
            ev.dataset, ev.config, ev.revision = str(local), None, None
    return spec


def _local_copy(folder: Path, split: str, data_files) -> Path | None:
    """A source's local copy under --data-dir: the hub file itself (`<name>/MLAN_80k.json`) for a
    source that picks one file, else `<name>/<split>.jsonl` (or .json, .parquet, a save_to_disk folder)."""
    if isinstance(data_files, str) and (folder / Path(data_files).name).is_file():
        return folder / Path(data_files).name
    return find_local(folder, split)
