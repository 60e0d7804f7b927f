"""Adapters: the reader (mlan.schemas) that turns a source's rows into items, by adapter name.

Named schemas (`arc`, `squad`, `vqav2`, ...) read rows in their Hugging Face layout; `qa`, `chat`
and `plain` read the columns a source names. A row its reader cannot use raises `BadRow`; the
mixture builder applies the source's bad-row policy (fail with the row number, or skip and count).
"""

from __future__ import annotations

from collections.abc import Callable

from mlan.config.mixture import ADAPTERS, SourceSpec
from mlan.schemas import BY_COLUMNS, REQUIRED_COLUMNS, SCHEMAS, Item


def _by_schema(read: Callable[[dict], Item]) -> Callable[[dict, SourceSpec], Item]:
    return lambda row, src: read(row)


def _by_columns(read: Callable) -> Callable[[dict, SourceSpec], Item]:
    return lambda row, src: read(row, src.columns)


def _arc_as_mlan(row: dict, src: SourceSpec) -> Item:
    """An ARC row as MLAN's data preparation reads it: a stem that is no question ends in "..."
    ("The best way to cool a drink is...": wang-research-lab/mlan@7ce179a8:llava/anno/evaluate_util.py L294)."""
    item = SCHEMAS["arc"](row)
    if not item.question.endswith("?"):
        item.question += "..."
    return item


ADAPTER_FUNCS: dict[str, Callable[[dict, SourceSpec], Item]] = {
    name: _by_columns(BY_COLUMNS[name]) if name in BY_COLUMNS else _by_schema(SCHEMAS[name]) for name in ADAPTERS
} | {"arc": _arc_as_mlan}


def required_columns(src: SourceSpec) -> list[str]:
    """Top-level columns a source must have for its adapter (checked before any row is read)."""
    if src.adapter in REQUIRED_COLUMNS:
        return list(REQUIRED_COLUMNS[src.adapter])
    c = src.columns
    names = (
        [c.messages, c.images, c.id]
        if src.adapter == "chat"
        else [c.question, c.answer, c.choices, c.context, c.image, c.rationale, c.id]
    )
    return [n.split(".")[0] for n in names if n]
