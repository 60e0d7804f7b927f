"""LLaVA's own data rows (LCS-558K, llava_v1_5_mix665k, MLAN's released files) read as chat items.

A row is `{"id", "image"?, "conversations": [{"from": "human" | "gpt", "value"}]}`; MLAN's rows add
`"model"`, and any other key is ignored. The reading follows LLaVA's training code
(haotian-liu/LLaVA @ c121f04, llava/train/train.py; MLAN's fork, wang-research-lab/mlan @ 7ce179a,
keeps these functions unchanged):

- A row with `image` shows one image, and its `<image>` marker is moved to the front of its turn as
  `<image>\\n` (`preprocess_multimodal`, L316-321). Here the marker is taken out of the text and the
  image goes to the item's `images`: the chat template renders an image part before the first user
  text, the way the `chat` adapter's images are shown, which gives the same `<image>\\n` + text.
- A row without `image` is text-only (`LazySupervisedDataset.__getitem__`, L722-723).
- Turn texts are kept as written (LLaVA's prompt joins them verbatim), except the marker's turn.
- A first turn from `gpt` is dropped (`preprocess_v1`, L425-427); the turns left must alternate human,
  gpt (the assert at L432).

Rows that LLaVA would train wrongly, or not at all, raise `BadRow` (naming the row id and the field)
instead of being guessed at:

- `from` other than human/gpt: a KeyError in LLaVA (`roles` at L420 knows only these two; no `system`).
- `image` with no `<image>` marker: LLaVA loads the image but no image token reaches the model
  (llava/model/llava_arch.py L233-241 splices zero image features when a row has no marker), so
  the row trains as text while its image is ignored. Here an item's images are always shown, so
  accepting the row would train something LLaVA never did.
- more than one marker for the one image: `preprocess_multimodal` (L319) quietly merges the markers of
  one turn into one, and markers in two turns fail in llava_arch; either way the row is malformed.
- a marker outside the first human turn: LLaVA would place the image there, but a chat item's images
  always come before the first user text.
- a marker in a row without `image`: LLaVA would train the literal text `<image>`.
- a conversation ending with a human turn, or an empty turn (except the first human turn of an image
  row, which may hold only the marker): nothing to learn from, as for the `chat` adapter.
"""

from __future__ import annotations

from typing import Any

from mlan.schemas.item import BadRow, Item

IMAGE_MARKER = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN (llava/constants.py L9)
ROLES = {"human": "user", "gpt": "assistant"}


def llava(row: dict) -> Item:
    """One LLaVA JSON row as a `chat` item: messages role/content without the `<image>` marker,
    and the row's image (a path relative to the source's image folder) in `images`."""
    rid = None if row.get("id") is None else str(row["id"])
    try:
        return _read(row, rid)
    except BadRow as e:
        raise BadRow(str(e), row_id=rid) from None


def _read(row: dict, rid: str | None) -> Item:
    image = _image(row.get("image"))
    turns = _turns(row.get("conversations"))
    # LLaVA's preprocess_v1 (L425-427) drops a first turn that is not from the human.
    start = 1 if turns[0][0] == "gpt" else 0
    _check_markers(turns, start, has_image=image is not None)
    messages = []
    for i in range(start, len(turns)):
        who, value = turns[i]
        expected = "human" if (i - start) % 2 == 0 else "gpt"
        if who != expected:
            raise BadRow(f"conversations[{i}].from: {who!r} where a {expected} turn is due (turns must alternate)")
        if i == start and image is not None:
            # LLaVA's preprocess_multimodal (L319-321) removes the marker, strips the turn and puts the
            # marker back in front, which is where the chat template shows the item's image. Other
            # turns reach LLaVA's prompt verbatim (L722-723, conv.get_prompt), so they stay as written.
            value = value.replace(IMAGE_MARKER, "").strip()
        elif not value.strip():
            raise BadRow(f"conversations[{i}].value: empty")
        messages.append({"role": ROLES[who], "content": value})
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise BadRow("conversations: must end with a gpt turn that answers a human turn")
    return Item(
        "chat",
        messages[0]["content"],
        messages[-1]["content"],
        rid,
        images=[image] if image is not None else None,
        messages=messages,
    )


def _check_markers(turns: list[tuple[str, str]], first_human: int, *, has_image: bool) -> None:
    """One `<image>` marker, in the first human turn, exactly when the row has an image."""
    marks = [i for i, (_, value) in enumerate(turns) for _ in range(value.count(IMAGE_MARKER))]
    if not has_image:
        if marks:
            raise BadRow(f"conversations[{marks[0]}].value: {IMAGE_MARKER!r} marker in a row without 'image'")
        return
    if not marks:
        raise BadRow(f"field 'image' is set but no turn holds an {IMAGE_MARKER!r} marker")
    outside = [i for i in marks if i != first_human]
    if outside:
        raise BadRow(f"conversations[{outside[0]}].value: {IMAGE_MARKER!r} outside the first human turn")
    if len(marks) > 1:
        raise BadRow(
            f"conversations[{first_human}].value: {len(marks)} {IMAGE_MARKER!r} markers for the row's one image"
        )


def _image(value: Any) -> str | None:
    """The row's one image path; None (an absent key, which Arrow fills with None) means text-only."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        # A list is the multi-image form of later LLaVA versions; LLaVA-1.5 joins one path (L698-701).
        raise BadRow(f"field 'image': expected one file path, got {type(value).__name__}")
    return value


def _turns(conversations: Any) -> list[tuple[str, str]]:
    """(from, value) of each turn, checked for type and role."""
    if not isinstance(conversations, list) or not conversations:
        raise BadRow("field 'conversations': expected a non-empty list of {from, value} turns")
    out = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise BadRow(f"conversations[{i}]: expected a {{from, value}} object")
        who, value = turn.get("from"), turn.get("value")
        if who not in ROLES:
            raise BadRow(f"conversations[{i}].from: {who!r} is not 'human' or 'gpt'")
        if not isinstance(value, str):
            raise BadRow(f"conversations[{i}].value: missing or not text")
        out.append((who, value))
    return out
