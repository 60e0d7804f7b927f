"""Default locations that chain the everyday commands in a project folder:
`mlan build-mixture` writes `runs/mixtures/<name>/`, `mlan sft recipes/<r>.yaml` writes
`runs/<r>/` and records it as the newest finished run, `mlan eval` and `mlan merge` default
to that run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlan.io import atomic_write_json

RUNS_DIR = Path("runs")
LATEST_FILE = "latest.json"


def mixture_dir(name: str, runs: Path = RUNS_DIR) -> Path:
    """Where a mixture named `name` is built by default."""
    return runs / "mixtures" / name


def rationales_dir(name: str, runs: Path = RUNS_DIR) -> Path:
    """Where `mlan rationales` keeps the teacher's rationales for mixture spec `name` by default."""
    return runs / "rationales" / name


def run_dir(recipe_name: str, runs: Path = RUNS_DIR) -> Path:
    """Where a training run of recipe `recipe_name` is written by default."""
    return runs / recipe_name


def record_latest(path: Path, kind: str, runs: Path = RUNS_DIR) -> Path:
    """Record `path` as the newest finished run (written only after the run completed)."""
    return atomic_write_json(
        runs / LATEST_FILE,
        {"path": str(Path(path).resolve()), "kind": kind, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


def latest_run(runs: Path = RUNS_DIR) -> Path | None:
    """The newest finished run recorded under `runs/`, if it still exists."""
    f = runs / LATEST_FILE
    if not f.is_file():
        return None
    path = Path(json.loads(f.read_text())["path"])
    return path if path.exists() else None
