"""Readers for the vision datasets, one per Hugging Face schema: one row in, one `Item` whose
`images` holds the row's image value (a file name, a {bytes, path} dict or a PIL image).

As for language: the training sources' readers (VQAv2, A-OKVQA) check each field and raise
`BadRow`; the evaluation-only readers (RealWorldQA, AI2D, POPE, GQA, ScienceQA) index the row
directly and keep a row without an image as a text-only question (`images` None).
"""

from __future__ import annotations

import re
from collections import Counter

from mlan.schemas.item import LETTERS, BadRow, Item, get, image_list, row_id, text


def vqav2(row: dict) -> Item:
    """VQAv2 (`HuggingFaceM4/VQAv2` schema): `multiple_choice_answer`, the answer MLAN trains on
    (wang-research-lab/mlan@7ce179a8:llava/anno/evaluate_util.py L313); without that column, the most
    common of the ten answers (first seen wins a tie). Yes/no answers are yes/no items."""
    mca = row.get("multiple_choice_answer")
    answers = row.get("answers")
    if mca is not None and str(mca).strip():
        answer = str(mca).strip()
    elif answers:
        texts = [str(a["answer"] if isinstance(a, dict) else a).strip().lower() for a in answers]
        counts = Counter(t for t in texts if t)
        if not counts:
            raise BadRow("field 'answers' holds no answer")
        best = max(counts.values())
        answer = next(t for t in texts if counts.get(t) == best)
    else:
        answer = text(row, "multiple_choice_answer")
    if answer.lower() in ("yes", "no"):
        answer = answer.lower()
    kind = "yesno" if answer in ("yes", "no") else "short"
    qid = row.get("question_id")
    return Item(kind, text(row, "question"), answer, str(qid if qid is not None else ""), images=[get(row, "image")])


def aokvqa(row: dict) -> Item:
    """A-OKVQA (`HuggingFaceM4/A-OKVQA`): multiple choice; the first rationale is kept for the
    chain-of-thought form of training."""
    choices = get(row, "choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise BadRow("field 'choices' needs at least two options")
    idx = get(row, "correct_choice_idx")
    if not isinstance(idx, int) or not 0 <= idx < len(choices):
        raise BadRow(f"field 'correct_choice_idx' out of range: {idx!r}")
    rationales = row.get("rationales") or []
    return Item(
        "mc",
        text(row, "question"),
        LETTERS[idx],
        text(row, "question_id"),
        choices=[str(c).strip() for c in choices],
        images=[get(row, "image")],
        rationale=str(rationales[0]).strip() if rationales else None,
    )


# The evaluation-only readers below name their fields in the order the rows are read, so that a
# row missing several fields reports the same one first as before.

_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.:)]\s*(.+?)\s*$")


def realworldqa(row: dict) -> Item:
    """RealWorldQA (`xai-org/RealworldQA`): the options (and an instruction) sit inside the
    question text; lettered options make a multiple-choice item, anything else a short answer."""
    lines = row["question"].splitlines()
    opts, stem = [], []
    for line in lines:
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(opts)]:
            opts.append(m.group(2))
        elif not opts and not line.lower().startswith("please answer"):
            stem.append(line)
    answer = str(row["answer"]).strip()
    if opts and re.fullmatch(r"[A-J]\.?", answer):
        return Item(
            id=None,
            question="\n".join(stem).strip(),
            choices=opts,
            answer=answer[0],
            kind="mc",
            images=image_list(row.get("image")),
        )
    return Item(
        id=None,
        question="\n".join(stem).strip(),
        answer=answer,
        kind=_short_kind(answer),
        images=image_list(row.get("image")),
    )


def ai2d(row: dict) -> Item:
    """AI2D (`lmms-lab/ai2d`): options and an answer given as the option's index or text."""
    opts = list(row["options"])
    ans = row["answer"]
    idx = int(ans) if str(ans).strip().isdigit() else opts.index(ans)
    return Item(
        id=row_id(row, "id"),
        question=row["question"],
        choices=opts,
        answer=LETTERS[idx],
        kind="mc",
        images=image_list(row.get("image")),
    )


def pope(row: dict) -> Item:
    """POPE: `lmms-lab/POPE` (question/answer) or the authors' files (text/label); yes/no."""
    q = row.get("question") or row["text"]
    a = str(row.get("answer") or row["label"]).strip().lower()
    return Item(id=row_id(row, "question_id"), question=q, answer=a, kind="yesno", images=image_list(row.get("image")))


def gqa(row: dict) -> Item:
    """GQA (`lmms-lab/GQA`): a short answer (yes/no answers are yes/no items)."""
    a = str(row["answer"]).strip()
    return Item(
        id=row_id(row, "id"),
        question=row["question"],
        answer=a,
        kind=_short_kind(a),
        images=image_list(row.get("image")),
    )


def scienceqa(row: dict) -> Item:
    """ScienceQA (`derek-thomas/ScienceQA`): the hint as context, options, integer answer, image
    only for some questions."""
    return Item(
        id=row_id(row, "pid"),
        context=(row.get("hint") or "").strip() or None,
        question=row["question"],
        choices=list(row["choices"]),
        answer=LETTERS[int(row["answer"])],
        kind="mc",
        images=image_list(row.get("image")),
    )


def _short_kind(answer: str) -> str:
    return "yesno" if answer.lower() in ("yes", "no") else "short"
