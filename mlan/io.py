"""Atomic outputs: everything is written under a temporary name beside the target and moved
into place only when complete, so an interrupted or failed run never leaves a half-written
folder or file where a finished one is expected. Also where two such JSON records differ."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlan.errors import MlanError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing output folder before any work starts, unless overwriting."""
    if out.exists() and not overwrite:
        raise MlanError(f"{out}: output already exists (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `out`; on success it replaces `out` in one rename.

    On any exception the temporary folder is removed and `out` is left untouched.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        # Move the old output aside first so that there is never a moment with neither.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        tmp.rename(out)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON (sorted keys, indented, trailing newline) atomically: stable bytes for hashing."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted paths at which two JSON documents differ (`training.learning_rate`), in key order: what
    a refusal names when a saved record (a run's, a rationale store's) does not match the current one."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff_paths(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]
