"""Readers for the language datasets, one per Hugging Face schema: one row in, one `Item` out.

The readers of the training sources (SQuAD, StrategyQA, ARC, CommonsenseQA, CosmosQA) check
every field they use, strip text and raise `BadRow` naming a bad field, because a mixture applies
a per-source policy to bad rows (fail with the row number, or skip and count). Evaluation reads
ARC, CommonsenseQA and OpenBookQA with that same reader. The evaluation-only readers (BoolQ, RACE,
HellaSwag, MMLU) index the row directly and keep text as written: a malformed evaluation file
fails as a whole, and the KeyError/IndexError it raises names the missing piece.
"""

from __future__ import annotations

import re

from mlan.schemas.item import (
    LETTERS,
    BadRow,
    Item,
    get,
    label_index,
    labelled_choices,
    optional,
    row_id,
    text,
    yes_no,
)


def squad(row: dict) -> Item:
    """SQuAD v1.1 (`rajpurkar/squad`): context + question, the first reference answer."""
    answers = get(row, "answers.text")
    if not isinstance(answers, list) or not answers or not str(answers[0]).strip():
        raise BadRow("field 'answers.text' holds no answer")
    return Item("short", text(row, "question"), str(answers[0]).strip(), text(row, "id"), context=text(row, "context"))


def strategyqa(row: dict) -> Item:
    """StrategyQA (`wics/strategy-qa` schema): facts joined into the context, yes/no answer."""
    facts = row.get("facts") or []
    context = " ".join(str(f).strip() for f in facts if str(f).strip()) or None
    return Item("yesno", text(row, "question"), yes_no(get(row, "answer"), "answer"), text(row, "qid"), context=context)


def _arc_like(row: dict, question_key: str) -> Item:
    # choices {text, label} and an answerKey among the labels; ARC labels may be `1..5` instead of `A..E`.
    texts, labels = labelled_choices(row)
    answer = label_index(labels, get(row, "answerKey"))
    return Item("mc", text(row, question_key), LETTERS[answer], optional(row, "id"), choices=texts)


def arc(row: dict) -> Item:
    """ARC Easy / Challenge (`allenai/ai2_arc`): 3-5 options, labels `A..E` or `1..5`, re-lettered."""
    return _arc_like(row, "question")


def commonsense_qa(row: dict) -> Item:
    """CommonsenseQA (`tau/commonsense_qa`): five lettered options."""
    return _arc_like(row, "question")


def openbookqa(row: dict) -> Item:
    """OpenBookQA (`allenai/openbookqa`, main): ARC's layout with the question in `question_stem`."""
    return _arc_like(row, "question_stem")


def cosmos_qa(row: dict) -> Item:
    """CosmosQA (`allenai/cosmos_qa`): context, question, `answer0..3`, integer `label`."""
    texts = [text(row, f"answer{i}") for i in range(4)]
    label = get(row, "label")
    if not isinstance(label, int) or not 0 <= label < 4:
        raise BadRow(f"field 'label' must be 0-3, got {label!r}")
    return Item(
        "mc", text(row, "question"), LETTERS[label], text(row, "id"), choices=texts, context=text(row, "context")
    )


def boolq(row: dict) -> Item:
    """BoolQ (`google/boolq`): passage as context, the question capitalised with a question mark."""
    q = row["question"].strip()
    q = q[:1].upper() + q[1:]
    if not q.endswith("?"):
        q += "?"
    ans = row["answer"]
    if isinstance(ans, str):
        ans = ans.strip().lower() in ("true", "yes", "1")
    return Item(id=row_id(row, "idx"), context=row["passage"], question=q, answer="yes" if ans else "no", kind="yesno")


# The evaluation-only readers below name their fields in the order the rows are read, so that a
# row missing several fields reports the same one first as before.


def race(row: dict) -> Item:
    """RACE (`ehovy/race`, one question per row): article as context, four options, letter answer."""
    return Item(
        id=row_id(row, "example_id"),
        context=row["article"],
        question=row["question"],
        choices=list(row["options"]),
        answer=str(row["answer"]).strip(),
        kind="mc",
    )


def mmlu(row: dict) -> Item:
    """MMLU (`cais/mmlu`): four options, integer answer; rows carry no id."""
    return Item(
        id=None,
        question=row["question"].strip(),
        choices=list(row["choices"]),
        answer=LETTERS[int(row["answer"])],
        kind="mc",
    )


_MARKUP = re.compile(r"\[.*?\]")


def hellaswag(row: dict) -> Item:
    """HellaSwag (`Rowan/hellaswag`): activity and context as the context, the endings as options."""
    ctx = row.get("ctx") or (row.get("ctx_a", "") + " " + row.get("ctx_b", "")).strip()
    label = row.get("activity_label")
    ctx = _MARKUP.sub("", ctx).replace("  ", " ").strip()  # WikiHow markup, as lm-eval strips it
    return Item(
        id=row_id(row, "ind"),
        context=f"{label}: {ctx}" if label else ctx,
        question="Which ending is the most likely continuation?",
        choices=[_MARKUP.sub("", e).strip() for e in row["endings"]],
        answer=LETTERS[int(row["label"])],
        kind="mc",
    )
