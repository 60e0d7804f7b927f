"""Adapters: one function per dataset schema (as published on the Hugging Face Hub), turning
one row into an `Item` (question, answer, options, context, images, rationale).

A row that lacks what its adapter needs raises `BadRow`; the mixture builder applies the
source's bad-row policy (fail with the row number, or skip and count).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from mlan.config.mixture import Columns, SourceSpec
from mlan.data.templates import LETTERS, Item


class BadRow(ValueError):
    """A row its adapter cannot use; the message says which field and why."""


def _get(row: dict, key: str) -> Any:
    """A field by (dotted) name; missing, None or empty text counts as absent."""
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


def _text(row: dict, key: str) -> str:
    return str(_get(row, key)).strip()


def _optional(row: dict, key: str | None) -> str | None:
    """An optional text field: absent or empty gives None."""
    if not key:
        return None
    try:
        return _text(row, key)
    except BadRow:
        return None


def _choice_index(labels: list, key: Any, n: int) -> int:
    """Index of the answer key among the labels (ARC mixes `A..D` and `1..4` labels)."""
    labels = [str(x).strip() for x in labels]
    key = str(key).strip()
    if key in labels:
        return labels.index(key)
    raise BadRow(f"answer key {key!r} is not among the choice labels {labels}")


def _choices(row: dict) -> tuple[list[str], list]:
    ch = _get(row, "choices")
    if not isinstance(ch, dict) or "text" not in ch or "label" not in ch:
        raise BadRow("field 'choices' must hold 'text' and 'label' lists")
    texts = [str(t).strip() for t in ch["text"]]
    if len(texts) < 2 or len(texts) != len(ch["label"]) or any(not t for t in texts):
        raise BadRow("field 'choices' needs at least two non-empty options with one label each")
    if len(texts) > len(LETTERS):
        raise BadRow(f"too many options ({len(texts)})")
    return texts, list(ch["label"])


def _yes_no(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    s = str(value).strip().lower()
    if s in ("yes", "true", "1"):
        return "yes"
    if s in ("no", "false", "0"):
        return "no"
    raise BadRow(f"field {key!r} is not a yes/no value: {value!r}")


def squad(row: dict, src: SourceSpec) -> Item:
    """SQuAD v1.1 (`rajpurkar/squad`): context + question, the first reference answer."""
    answers = _get(row, "answers.text")
    if not isinstance(answers, list) or not answers or not str(answers[0]).strip():
        raise BadRow("field 'answers.text' holds no answer")
    return Item(
        "short", _text(row, "question"), str(answers[0]).strip(), _text(row, "id"), context=_text(row, "context")
    )


def strategyqa(row: dict, src: SourceSpec) -> Item:
    """StrategyQA (`wics/strategy-qa` schema): facts joined into the context, yes/no answer."""
    facts = row.get("facts") or []
    context = " ".join(str(f).strip() for f in facts if str(f).strip()) or None
    return Item(
        "yesno", _text(row, "question"), _yes_no(_get(row, "answer"), "answer"), _text(row, "qid"), context=context
    )


def commonsense_qa(row: dict, src: SourceSpec) -> Item:
    """CommonsenseQA (`tau/commonsense_qa`): five lettered options."""
    texts, labels = _choices(row)
    answer = _choice_index(labels, _get(row, "answerKey"), len(texts))
    return Item("mc", _text(row, "question"), answer, _text(row, "id"), choices=texts)


def arc(row: dict, src: SourceSpec) -> Item:
    """ARC Easy / Challenge (`allenai/ai2_arc`): 3-5 options, labels `A..E` or `1..5`, re-lettered."""
    texts, labels = _choices(row)
    answer = _choice_index(labels, _get(row, "answerKey"), len(texts))
    return Item("mc", _text(row, "question"), answer, _text(row, "id"), choices=texts)


def cosmos_qa(row: dict, src: SourceSpec) -> Item:
    """CosmosQA (`allenai/cosmos_qa`): context, question, `answer0..3`, integer `label`."""
    texts = [_text(row, f"answer{i}") for i in range(4)]
    label = _get(row, "label")
    if not isinstance(label, int) or not 0 <= label < 4:
        raise BadRow(f"field 'label' must be 0-3, got {label!r}")
    return Item("mc", _text(row, "question"), label, _text(row, "id"), choices=texts, context=_text(row, "context"))


def vqav2(row: dict, src: SourceSpec) -> Item:
    """VQAv2 (`HuggingFaceM4/VQAv2` schema): the most common of the ten answers (first seen wins
    a tie), `multiple_choice_answer` when the list is absent; yes/no answers use yes/no templates."""
    answers = row.get("answers")
    if answers:
        texts = [str(a["answer"] if isinstance(a, dict) else a).strip().lower() for a in answers]
        counts = Counter(t for t in texts if t)
        if not counts:
            raise BadRow("field 'answers' holds no answer")
        best = max(counts.values())
        answer = next(t for t in texts if counts.get(t) == best)
    else:
        answer = _text(row, "multiple_choice_answer").lower()
    kind = "yesno" if answer in ("yes", "no") else "short"
    qid = row.get("question_id")
    return Item(kind, _text(row, "question"), answer, str(qid if qid is not None else ""), images=[_get(row, "image")])


def aokvqa(row: dict, src: SourceSpec) -> Item:
    """A-OKVQA (`HuggingFaceM4/A-OKVQA`): multiple choice with a letter target; the first rationale
    feeds the chain-of-thought form."""
    choices = _get(row, "choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise BadRow("field 'choices' needs at least two options")
    idx = _get(row, "correct_choice_idx")
    if not isinstance(idx, int) or not 0 <= idx < len(choices):
        raise BadRow(f"field 'correct_choice_idx' out of range: {idx!r}")
    rationales = row.get("rationales") or []
    return Item(
        "mc",
        _text(row, "question"),
        idx,
        _text(row, "question_id"),
        choices=[str(c).strip() for c in choices],
        images=[_get(row, "image")],
        rationale=str(rationales[0]).strip() if rationales else None,
    )


def chat(row: dict, src: SourceSpec) -> Item:
    """Rows already in chat form: a list of {role, content} (+ a list of images)."""
    cols = src.columns
    messages = _get(row, cols.messages)
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
    images = list(_get(row, cols.images)) if cols.images else []
    first_user = next(m["content"] for m in out if m["role"] == "user")
    rid = str(_get(row, cols.id)) if cols.id else ""
    return Item("chat", first_user, out[-1]["content"], rid, images=images or None, messages=out)


def qa(row: dict, src: SourceSpec) -> Item:
    """Any question/answer data, by column names: choices make it multiple choice (answer as a
    letter, an index or the choice text), a bool or yes/no answer makes it yes/no."""
    cols: Columns = src.columns
    question = _text(row, cols.question)
    answer = _get(row, cols.answer)
    context = _optional(row, cols.context)
    images = [_get(row, cols.image)] if cols.image else None
    rationale = _optional(row, cols.rationale)
    rid = str(_get(row, cols.id)) if cols.id else ""
    if cols.choices:
        choices = [str(c).strip() for c in _get(row, cols.choices)]
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
        return Item("mc", question, idx, rid, choices=choices, context=context, images=images, rationale=rationale)
    if isinstance(answer, bool) or str(answer).strip().lower() in ("yes", "no"):
        return Item(
            "yesno", question, _yes_no(answer, cols.answer), rid, context=context, images=images, rationale=rationale
        )
    return Item("short", question, str(answer).strip(), rid, context=context, images=images, rationale=rationale)


def plain(row: dict, src: SourceSpec) -> Item:
    """Question/answer columns turned into one user turn and one assistant turn exactly as written:
    no instruction template, no context line (data in its own phrasing, e.g. a closed-vocabulary toy world)."""
    cols: Columns = src.columns
    question = _text(row, cols.question)
    answer = _text(row, cols.answer)
    images = [_get(row, cols.image)] if cols.image else None
    rid = str(_get(row, cols.id)) if cols.id else ""
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Item("chat", question, answer, rid, images=images, messages=messages)


ADAPTER_FUNCS: dict[str, Callable[[dict, SourceSpec], Item]] = {
    "squad": squad,
    "strategyqa": strategyqa,
    "commonsense_qa": commonsense_qa,
    "cosmos_qa": cosmos_qa,
    "arc": arc,
    "vqav2": vqav2,
    "aokvqa": aokvqa,
    "chat": chat,
    "qa": qa,
    "plain": plain,
}


def required_columns(src: SourceSpec) -> list[str]:
    """Top-level columns a source must have for its adapter (checked before any row is read)."""
    fixed = {
        "squad": ["id", "context", "question", "answers"],
        "strategyqa": ["qid", "question", "answer"],
        "commonsense_qa": ["id", "question", "choices", "answerKey"],
        "arc": ["id", "question", "choices", "answerKey"],
        "cosmos_qa": ["id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"],
        "vqav2": ["question", "image"],
        "aokvqa": ["question_id", "question", "choices", "correct_choice_idx", "image"],
    }
    if src.adapter in fixed:
        return fixed[src.adapter]
    c = src.columns
    names = (
        [c.messages, c.images, c.id]
        if src.adapter == "chat"
        else [c.question, c.answer, c.choices, c.context, c.image, c.rationale, c.id]
    )
    return [n.split(".")[0] for n in names if n]
