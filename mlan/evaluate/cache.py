"""Per-task result cache: a finished task is written at once, so an interrupted evaluation resumes.

The key hashes everything that can change a task's score: the model's identity (folder and
the size/mtime of its weight files, or hub id), the suite's protocol and the task's settings,
the data's fingerprint, the limit and the dtype. A changed input gives a new key; an old entry
is never reused for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlan.io import atomic_write_json

if TYPE_CHECKING:
    from mlan.config.evaluation import EvalRun
    from mlan.config.suite import EvalSuite, SuiteTask

CACHE_VERSION = 1


def model_identity(model: str | Path) -> dict[str, Any]:
    """What identifies a model's weights without reading them: the files' names, sizes and mtimes."""
    p = Path(model).expanduser()
    if not p.is_dir():
        return {"hub": str(model)}
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".json") and f.is_file())
    return {"path": str(p.resolve()), "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of a JSON-able description of one task run."""
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_file(cache_dir: Path, suite: str, task: str) -> Path:
    """Where one task's cached result lives."""
    return cache_dir / f"{suite}__{task}.json"


def load_cached(cache_dir: Path, suite: str, task: str, key: str) -> dict | None:
    """The cached result for this key, or None (missing, stale or unreadable)."""
    f = cache_file(cache_dir, suite, task)
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return None
    return data["result"] if data.get("key") == key else None


def store(cache_dir: Path, suite: str, task: str, key: str, result: dict) -> None:
    """Record a finished task (atomically: an interruption never leaves half a file)."""
    atomic_write_json(cache_file(cache_dir, suite, task), {"key": key, "result": result})


def task_key(model: dict[str, Any], suite: EvalSuite, task: SuiteTask, run: EvalRun) -> str:
    """The cache key of one task of one model (`model`: its identity, `model_identity` or a scripted name)."""
    from mlan.evaluate.tasks import data_fingerprint

    # Averages change no task's score, so editing them keeps the cached tasks.
    protocol = suite.model_dump(mode="json", exclude={"tasks", "description", "name", "averages"})
    return cache_key(
        {
            "model": model,
            "engine": suite.engine,
            "protocol": protocol if suite.engine == "generate" else None,
            "task": task.model_dump(mode="json"),
            "data": data_fingerprint(task, run.data_dir, run.data or None),
            "limit": run.limit,
            "dtype": run.dtype,
            # Only a non-default engine enters the key, so results cached before engines existed stay valid.
            **({"engine": run.engine} if run.engine != "transformers" and suite.engine == "generate" else {}),
            # Likewise the backend: mlan's gives lm-eval's scores, so results cached before it existed stay valid,
            # and `--backend lm_eval` (asked for to compare) computes its own.
            **({"backend": run.backend} if run.backend != "mlan" and suite.engine == "lm_eval" else {}),
        }
    )
