"""From a teacher's raw output to a rationale and its status: the cleaning MLAN's code leaves open, done on
purpose and recorded per row.

MLAN's generation code decodes prompt and output together and keeps `text.split(eos_token)[1]`, which
still holds the repeated instruction and the row's block before the rationale; no committed code strips it,
and nothing drops an empty output, an "I disagree" or a rationale cut off by `max_new_tokens`
(../shared/reference/rationales.md sections 2 and 5; IT_MLLM@af440a6 inference_yi_squad_cot.py:34). mlan
decodes only the new tokens, cuts where the teacher starts another example, and gives every row a status:

- kept: used by `targets: rationale`;
- empty: nothing left after cleaning;
- disagree: the teacher said "I disagree", as the instruction asks it to when it thinks the answer wrong;
- too_long: cut off at the token limit, mid-explanation (joining "the direct answer is: X." to half a
  sentence teaches nothing good);
- mismatch: only with `check_answer: true`, the rationale's conclusion does not name the gold answer.
"""

from __future__ import annotations

import re

from mlan.schemas import LETTERS, Item

STATUSES = ("kept", "empty", "disagree", "too_long", "mismatch")
_LABEL = re.compile(r"^\s*Rationale\s*:\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def clean(raw: str, finished: bool, *, stops: list[str]) -> tuple[str, bool]:
    """(the rationale, whether the teacher finished it): the output up to the first stop text (the start
    of another example, a literal separator), without a leading `Rationale:` label or outer whitespace.
    An output cut at a stop text was finished, whatever the token count says."""
    cut = len(raw)
    for s in stops:
        i = raw.find(s) if s else -1
        if i != -1:
            cut = min(cut, i)
    return _LABEL.sub("", raw[:cut]).strip(), finished or cut < len(raw)


def concludes(rationale: str, item: Item) -> bool:
    """Whether the rationale's last two sentences name the gold answer: a heuristic for `check_answer`.

    Multiple choice: the gold letter in an answer-like position (`option B`, `(B)`, `B)`, `is B`, `answer: B`)
    or the gold option's text; yes/no: `yes`/`true` for yes, `no`/`false`/`not` for no; a short answer: the
    gold text anywhere in the rationale (a SQuAD span or a VQAv2 word is rarely restated at the very end)."""
    text = rationale.strip()
    if item.kind == "short" or item.kind == "exact":
        return _norm(item.target()) in _norm(text)
    end = " ".join(_SENTENCE_END.split(text)[-2:])
    low = end.lower()
    if item.kind == "yesno":
        words = set(re.findall(r"[a-z]+", low))
        return bool(words & ({"yes", "true"} if item.target() == "yes" else {"no", "false", "not"}))
    if item.kind == "mc":
        letter = item.target()
        pattern = (
            rf"(?:option|answer|choice)\s*(?:is\s*)?:?\s*\(?{letter}\b|\({letter}\)|\b{letter}\)|\bis\s+{letter}\b"
        )
        if re.search(pattern, end):
            return True
        choice = (item.choices or [])[LETTERS.index(letter)] if item.choices else ""
        return bool(choice) and _norm(choice) in _norm(end)
    return True


def _norm(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def status_of(rationale: str, finished: bool, item: Item, check_answer: bool) -> str:
    """The row's status (first that applies: empty, disagree, too_long, mismatch, else kept)."""
    if not rationale:
        return "empty"
    if "i disagree" in rationale.lower():
        return "disagree"
    if not finished:
        return "too_long"
    if check_answer and not concludes(rationale, item):
        return "mismatch"
    return "kept"
