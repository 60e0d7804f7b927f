"""Loading typed YAML configs: strict pydantic models, single-field overrides, one-line errors.

Every YAML kind (mixture spec, SFT recipe, evaluation suite, merge) is a `StrictModel`
subclass. `load_config` reads a file, applies `-o a.b=value` overrides, validates, and turns
the first problem into one `MlanError` line that names the file, the field path and what
was expected; an unknown key suggests the closest valid one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from mlan.errors import MlanError, first_line

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, docstrings become field help."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning a missing file or a syntax error into one line."""
    path = Path(path)
    if not path.is_file():
        raise MlanError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise MlanError(f"{path}: {where}invalid YAML ({problem})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MlanError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "override") -> dict[str, Any]:
    """Set single fields from `dotted.path=value` strings; values are parsed as YAML scalars.

    List items are addressed by index (`sources.0.count=100`). Unknown paths are left to
    validation, which reports them like unknown keys in the file.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MlanError(f"{source} {item!r}: expected FIELD.PATH=VALUE, e.g. training.learning_rate=1e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise MlanError(f"{source} {item!r}: {'.'.join(parts[: i + 1])}: no such list item")
                idx = int(part)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if not isinstance(node.get(part), (dict, list)):
                        node[part] = {}
                    node = node[part]
            else:
                raise MlanError(f"{source} {item!r}: {'.'.join(parts[:i])} is not a section")
    return data


def load_config(path: str | Path, model: type[M], overrides: Iterable[str] = ()) -> M:
    """Read, override and validate one YAML config file as `model`."""
    overrides = list(overrides)
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return validate_config(data, model, source=str(path))
    except MlanError as e:
        # Name the override when the bad field came from the command line, not the file.
        culprit = next((o for o in overrides if f": {o.partition('=')[0].strip()}:" in str(e)), None)
        if culprit:
            raise MlanError(f"{e} (from -o {culprit})") from None
        raise


def validate_config(data: dict[str, Any], model: type[M], source: str) -> M:
    """Validate a mapping as `model`; the first error becomes one readable `MlanError` line."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MlanError(f"{source}: {describe_error(model, e)}") from None


def describe_error(model: type[BaseModel], error: ValidationError) -> str:
    """One line for the first error: `field.path: what was expected (got ...)`."""
    err = error.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _field_names_at(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else (f" (valid: {', '.join(valid)})" if valid else "")
        return f"{path}: unknown field{suggestion}"
    if err["type"] == "missing":
        return f"{path}: required field is missing"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else msg
    if "input" in err and err["type"] not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
        return f"{path}: {msg} (got {err['input']!r})"
    return f"{path}: {msg}"


def _field_names_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the fields valid at `loc` inside `model`, following nested models and lists."""
    candidates: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for tp in candidates:
            for inner in _unwrap(tp):
                if isinstance(inner, type) and issubclass(inner, BaseModel) and isinstance(part, str):
                    if part in inner.model_fields:
                        nxt.append(inner.model_fields[part].annotation)
                elif typing.get_origin(inner) in (list, tuple) and isinstance(part, int):
                    nxt.extend(typing.get_args(inner)[:1])
                elif typing.get_origin(inner) is dict:
                    nxt.extend(typing.get_args(inner)[1:2])
        candidates = nxt
    names: list[str] = []
    for tp in candidates:
        for inner in _unwrap(tp):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                names.extend(n for n in inner.model_fields if n not in names)
    return names


def _unwrap(tp: Any) -> list[Any]:
    """Flatten Optional/Union/Annotated into the member types."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for a in typing.get_args(tp):
            out.extend(_unwrap(a))
        return out
    return [tp]


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (defaults filled in), for run folders and manifests."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
