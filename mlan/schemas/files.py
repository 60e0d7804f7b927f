"""Local copies of datasets: JSONL, JSON (a list of rows, `{"data": [rows]}` or JSON lines),
Parquet, or a `save_to_disk` folder, in the dataset's own schema.

Two ways to read one: `open_local` gives a memory-mapped `datasets.Dataset` (a mixture streams
sources far larger than memory through it), `read_rows` a list of rows as written (evaluation).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlan.console import quiet_logger
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
            # The JSON loader logs its own ERROR (several wrapped lines) before raising; the MlanError
            # below says the same in one line, so the library's record is held back (-v shows it).
            with quiet_logger("datasets", logging.CRITICAL + 1):
                ds = datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train", **kwargs)
        else:
            raise MlanError(f"{what}: {path}: expected a .jsonl, .json or .parquet file or a save_to_disk folder")
    except MlanError:
        raise
    except Exception as e:  # pyarrow/json parse errors of a user's file: name the file, keep it one line
        raise MlanError(f"{what}: cannot read {path}: {_why_unreadable(path, e)}") from None
    return ds


def _why_unreadable(path: Path, e: BaseException) -> str:
    """What is wrong with a local file the loader refused: for JSON, the first line that does not
    parse and the parser's reason, found by reading the file again here (pyarrow counts rows within
    a block, not lines of the file); otherwise the root cause's first line, not the wrapper's
    "An error occurred while generating the dataset"."""
    if path.suffix in (".jsonl", ".json") and path.is_file():
        found = _first_bad_json(path)
        if found:
            return found
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    return first_line(e)


def _first_bad_json(path: Path) -> str | None:
    """ "line N: invalid JSON (reason, column C)" for the first line of JSON lines that does not
    parse, or the place a one-document .json file breaks; None when the file parses."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
            return None
        except UnicodeDecodeError as e:
            return f"not UTF-8 text (byte {e.start})"
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # one document (a list, {"data": [...]}) broken at this place
                return f"line {e.lineno}: invalid JSON ({e.msg}, column {e.colno})"
            # "Extra data": a first value, then more: JSON lines in a .json file, read line by line
    with path.open("rb") as f:  # a line at a time: the file may be far larger than memory
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {i}: not UTF-8 text (byte {e.start} of the line)"
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as e:
                return f"line {i}: invalid JSON ({e.msg}, column {e.colno})"
    return None


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
