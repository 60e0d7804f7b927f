"""The typed item every schema reader produces, and the field helpers the readers share.

An `Item` is one question (or one conversation) in a uniform shape, whatever the dataset it was
read from: mixtures render it as a training instruction (mlan.data.templates), evaluation as a
prompt (mlan.evaluate.generate). A row a reader cannot use raises `BadRow`, whose message names
the field and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Choice letters. Training items may have up to 26 options; the generate engine reads answers
# A-J only (mlan.evaluate.extract), so evaluation refuses items with more than ten.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BadRow(ValueError):
    """A row its reader cannot use; the message says which field and why, and `row_id` the row's
    own id when the reader knows it (the mixture names it beside the row number)."""

    def __init__(self, message: str, row_id: str | None = None) -> None:
        super().__init__(message)
        self.row_id = row_id


@dataclass
class Item:
    """One question in a uniform shape.

    `kind`: "mc" (gold `answer` is the letter of the right one of `choices`), "yesno" (gold
    "yes"/"no"), "short" (gold is a short text), "exact" (a short text matched whole: the
    generic `qa` rows of evaluation) or "chat" (`messages` holds the conversation as given and
    `answer` its last assistant turn). `id` is None when the row has none (callers number such
    rows). `images` holds image values as stored in the row (a path, a {bytes, path}
    dict or a PIL image) until a stage resolves them.
    """

    kind: str
    question: str
    answer: str
    id: str | None
    choices: list[str] | None = None
    context: str | None = None
    images: list | None = None
    rationale: str | None = None
    messages: list[dict] | None = None

    def target(self) -> str:
        """The direct answer string (the letter for multiple choice)."""
        return self.answer

    @property
    def answer_index(self) -> int:
        """The index of the right choice of a multiple-choice item."""
        return LETTERS.index(self.answer)

    @property
    def image(self) -> Any:
        """The item's one image (evaluation questions have at most one), or None."""
        return self.images[0] if self.images else None

    @image.setter
    def image(self, value: Any) -> None:
        self.images = None if value is None else [value]


def get(row: dict, key: str) -> Any:
    """A field by (dotted) name; missing, None or empty text counts as absent (`BadRow`)."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BadRow(f"missing field {key!r}")
        value = value[part]
    if value is None:  # JSON loaders fill a key absent from some rows with None
        raise BadRow(f"missing field {key!r}")
    if isinstance(value, str) and not value.strip():
        raise BadRow(f"empty field {key!r}")
    return value


def text(row: dict, key: str) -> str:
    """A required text field, stripped."""
    return str(get(row, key)).strip()


def optional(row: dict, key: str | None) -> str | None:
    """An optional text field: absent or empty gives None."""
    if not key:
        return None
    try:
        return text(row, key)
    except BadRow:
        return None


def row_id(row: dict, key: str) -> str | None:
    """An evaluation row's id as written, or None without the key (the caller numbers such rows)."""
    return str(row[key]) if key in row else None


def image_list(value: Any) -> list | None:
    """A row's image value as an item's `images`: None when the row has no image."""
    return None if value is None or (isinstance(value, str) and value == "") else [value]


def yes_no(value: Any, key: str) -> str:
    """`yes` or `no` from a bool or its usual spellings."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    s = str(value).strip().lower()
    if s in ("yes", "true", "1"):
        return "yes"
    if s in ("no", "false", "0"):
        return "no"
    raise BadRow(f"field {key!r} is not a yes/no value: {value!r}")


def labelled_choices(row: dict) -> tuple[list[str], list]:
    """(option texts, labels) of a `choices: {text: [...], label: [...]}` field."""
    ch = get(row, "choices")
    if not isinstance(ch, dict) or "text" not in ch or "label" not in ch:
        raise BadRow("field 'choices' must hold 'text' and 'label' lists")
    texts = [str(t).strip() for t in ch["text"]]
    if len(texts) < 2 or len(texts) != len(ch["label"]) or any(not t for t in texts):
        raise BadRow("field 'choices' needs at least two non-empty options with one label each")
    if len(texts) > len(LETTERS):
        raise BadRow(f"too many options ({len(texts)})")
    return texts, list(ch["label"])


def label_index(labels: list, key: Any) -> int:
    """Index of the answer key among the labels (ARC mixes `A..D` and `1..4` labels)."""
    labels = [str(x).strip() for x in labels]
    key = str(key).strip()
    if key in labels:
        return labels.index(key)
    raise BadRow(f"answer key {key!r} is not among the choice labels {labels}")
