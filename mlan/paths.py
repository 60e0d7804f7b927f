"""Where shipped configs and bundled data live, and how user-given paths resolve.

The YAML files in the repository's `recipes/`, `data_mixtures/` and `evaluations/` are the
source of truth. From a source checkout (or editable install) they are read there; a wheel
carries copies under `mlan/_shipped/` (see pyproject's force-include). A path a user gives
is used as is when it exists, and otherwise looked up among the shipped files, so
`mlan sft recipes/tiny.yaml` works from any folder.
"""

from __future__ import annotations

from pathlib import Path

from mlan.errors import MlanError

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
BUNDLED_DATA_DIR = ASSETS_DIR / "data"
BUNDLED_PREFIX = "bundled:"
SHIPPED_KINDS = ("recipes", "data_mixtures", "evaluations")


def shipped_dir(kind: str) -> Path:
    """The folder holding the shipped YAML files of one kind."""
    if kind not in SHIPPED_KINDS:
        raise ValueError(f"unknown kind of shipped config: {kind}")
    checkout = PACKAGE_DIR.parent / kind
    return checkout if checkout.is_dir() else PACKAGE_DIR / "_shipped" / kind


def shipped_files(kind: str) -> list[Path]:
    """All shipped YAML files of one kind, sorted by name."""
    return sorted(shipped_dir(kind).glob("*.yaml"))


def resolve_config(path: str | Path, kind: str) -> Path:
    """A config file by path, or by shipped name (`recipes/tiny.yaml`, `tiny.yaml` or `tiny`)."""
    p = Path(path)
    if p.is_file():
        return p
    rel = p.relative_to(kind) if p.parts[:1] == (kind,) else p
    base = shipped_dir(kind)
    for cand in (base / rel, base / f"{rel}.yaml"):
        if cand.is_file():
            return cand
    names = ", ".join(f.stem for f in shipped_files(kind))
    raise MlanError(f"{path}: file not found (shipped {kind}: {names})")


def looks_like_path(ref: str) -> bool:
    """Whether a model reference is meant as a local path rather than a hub id (`org/name` or a
    bare legacy name): a missing one is then reported as a missing folder, not looked up on the hub."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref


def resolve_data_path(value: str | Path) -> Path:
    """A data path from a config: `bundled:<rel>` points into mlan's bundled data."""
    s = str(value)
    if s.startswith(BUNDLED_PREFIX):
        return BUNDLED_DATA_DIR / s[len(BUNDLED_PREFIX) :].lstrip("/")
    return Path(s).expanduser()
