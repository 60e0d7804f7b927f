"""Readers for data in no published schema: rows whose columns a mixture source names
(`qa`, `chat`, `plain`, configured by `Columns`), and the fixed `qa` rows of evaluation
(`{id, question, answer[, choices][, image]}`, scored by exact match of the whole answer).
"""

from __future__ import annotations

from mlan.config.mixture import Columns
from mlan.schemas.item import LETTERS, BadRow, Item, get, image_list, optional, row_id, text, yes_no


def columns_chat(row: dict, cols: Columns) -> Item:
    """Rows already in chat form: a list of {role, content} (+ a list of images)."""
    messages = get(row, cols.messages)
    if not isinstance(messages, list) or not messages:
        raise BadRow(f"field {cols.messages!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRow(f"message {i}: needs a role of system, user or assistant")
        content = m.get("content")
        if isinstance(content, list):  # multimodal parts: the image goes back to the `images` column
            content = "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str) or not content.strip():
            raise BadRow(f"message {i}: empty content")
        out.append({"role": m["role"], "content": content})
    roles = [m["role"] for m in out if m["role"] != "system"]
    if "user" not in roles or roles[-1] != "assistant":
        raise BadRow("a conversation needs a user turn and must end with an assistant turn")
    images = list(get(row, cols.images)) if cols.images else []
    first_user = next(m["content"] for m in out if m["role"] == "user")
    rid = str(get(row, cols.id)) if cols.id else None
    return Item("chat", first_user, out[-1]["content"], rid, images=images or None, messages=out)


def columns_qa(row: dict, cols: Columns) -> Item:
    """Any question/answer data, by column names: choices make it multiple choice (answer as a
    letter, an index or the choice text), a bool or yes/no answer makes it yes/no."""
    question = text(row, cols.question)
    answer = get(row, cols.answer)
    context = optional(row, cols.context)
    images = [get(row, cols.image)] if cols.image else None
    rationale = optional(row, cols.rationale)
    rid = str(get(row, cols.id)) if cols.id else None
    if cols.choices:
        choices = [str(c).strip() for c in get(row, cols.choices)]
        if len(choices) < 2 or len(choices) > len(LETTERS):
            raise BadRow(f"field {cols.choices!r} needs 2 to {len(LETTERS)} options")
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
            idx = answer
        elif str(answer).strip() in LETTERS[: len(choices)]:
            idx = LETTERS.index(str(answer).strip())
        elif str(answer).strip() in choices:
            idx = choices.index(str(answer).strip())
        else:
            raise BadRow(f"answer {answer!r} is neither an option index, letter nor option text")
        return Item(
            "mc", question, LETTERS[idx], rid, choices=choices, context=context, images=images, rationale=rationale
        )
    if isinstance(answer, bool) or str(answer).strip().lower() in ("yes", "no"):
        return Item(
            "yesno", question, yes_no(answer, cols.answer), rid, context=context, images=images, rationale=rationale
        )
    return Item("short", question, str(answer).strip(), rid, context=context, images=images, rationale=rationale)


def columns_plain(row: dict, cols: Columns) -> Item:
    """Question/answer columns turned into one user turn and one assistant turn exactly as written:
    no instruction template, no context line (data in its own phrasing, e.g. a closed-vocabulary toy world)."""
    question = text(row, cols.question)
    answer = text(row, cols.answer)
    images = [get(row, cols.image)] if cols.image else None
    rid = str(get(row, cols.id)) if cols.id else None
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Item("chat", question, answer, rid, images=images, messages=messages)


BY_COLUMNS = {"chat": columns_chat, "qa": columns_qa, "plain": columns_plain}


def qa_rows(row: dict) -> Item:
    """Evaluation's generic short-answer rows: multiple choice when `choices` is given (answer as
    a letter, the choice text or an index), yes/no for yes/no answers, else an `exact` item whose
    whole normalised answer must match."""
    answer = str(row["answer"]).strip()
    choices = row.get("choices")
    if choices:
        choices = [str(c) for c in choices]
        if answer in LETTERS[: len(choices)]:
            letter = answer
        elif answer in choices:
            letter = LETTERS[choices.index(answer)]
        else:
            letter = LETTERS[int(answer)]
        return Item(
            id=row_id(row, "id"),
            question=row["question"],
            choices=choices,
            answer=letter,
            kind="mc",
            images=image_list(row.get("image")),
        )
    kind = "yesno" if answer.lower() in ("yes", "no") else "exact"
    return Item(
        id=row_id(row, "id"),
        question=str(row["question"]),
        answer=answer.lower() if kind == "yesno" else answer,
        kind=kind,
        images=image_list(row.get("image")),
    )
