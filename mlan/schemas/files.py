"""Local copies of datasets: JSONL, JSON (a list of rows, `{"data": [rows]}` or JSON lines),
Parquet, or a `save_to_disk` folder, in the dataset's own schema.

Two ways to read one: `open_local` gives a memory-mapped `datasets.Dataset` (a mixture streams
sources far larger than memory through it), `read_rows` a list of rows as written (evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlan.errors import MlanError, first_line

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def find_local(folder: Path, split: str, *, folders: bool = True) -> Path | None:
    """`<folder>/<split>.jsonl` (or .json, .parquet), else with `folders` a save_to_disk folder `<folder>/<split>/`."""
    for suffix in LOCAL_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return folder / split if folders and (folder / split / "dataset_info.json").is_file() else None


def open_local(path: Path, *, split: str | None, what: str):
    """One split of a local file or save_to_disk folder as a `datasets.Dataset`; every failure a
    user can cause is one `MlanError` line starting with `what`."""
    import datasets

    if not path.exists():
        raise MlanError(f"{what}: file not found: {path}")
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise MlanError(f"{what}: {path} has no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
        elif path.suffix in LOCAL_SUFFIXES:
            kwargs = {"field": "data"} if _rows_under_data(path) else {}
            ds = datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train", **kwargs)
        else:
            raise MlanError(f"{what}: {path}: expected a .jsonl, .json or .parquet file or a save_to_disk folder")
    except MlanError:
        raise
    except Exception as e:  # pyarrow/json parse errors of a user's file: name the file, keep it one line
        raise MlanError(f"{what}: cannot read {path}: {first_line(e)}") from None
    return ds


def is_json_lines(path: Path) -> bool:
    """Whether a local file holds one JSON row per line (so row N is line N + 1), rather than a JSON
    list such as LLaVA's pretty-printed files, where a row number says nothing about lines."""
    if path.suffix == ".jsonl":
        return True
    if path.suffix != ".json" or not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return not head.startswith(b"[") and not _rows_under_data(path)


def _rows_under_data(path: Path) -> bool:
    """Whether a .json file is one object holding its rows in a `data` list (the Arrow loader
    needs to be told; it reads a list of rows or JSON lines by itself)."""
    if path.suffix != ".json":
        return False
    with path.open("rb") as f:
        if not f.read(4096).lstrip().startswith(b"{"):
            return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # JSON lines, or a broken file the loader then reports
    return isinstance(data, dict) and isinstance(data.get("data"), list)


def read_rows(path: Path, *, split: str | None = None, what: str = "local data") -> list[dict]:
    """All rows of a local file as written: JSON lines (any suffix but .parquet), a .json list or
    `{"data": [rows]}`; Parquet files and save_to_disk folders through `open_local`.

    JSON is parsed here, not by the Arrow loader, so rows stay as written: a key absent from some
    rows stays absent (Arrow fills it with None) and a column may mix types (Arrow refuses or casts).
    """
    if path.is_dir() or path.suffix == ".parquet":
        return list(open_local(path, split=split, what=what))
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if isinstance(data, list):
                return data
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MlanError(f"{path}: line {i}: invalid JSON ({e.msg})") from None
    return rows
