"""`extraction: mlan`: MLAN's answer filters, then exact match, with the filters' bugs fixed.

Language (wang-research-lab/lm_eval@6f81a6b:lm_eval/filters/answermapping.py): the continuation, already
cut at MLAN's stops (`User:` `"` `:` `.` `,`), is kept when it is a choice letter, mapped to the
letter of a choice all of whose words it contains, BoolQ's true/false read as yes/no (L210-230);
then exact match ignoring case (race_em.yaml:L9-13).
Vision (wang-research-lab/mlan@7ce179a:scripts/eval/custom/*/): the text up to the first `. , : "` or
newline, stripped (`regex` filter, lmms-eval@b218a48:lmms_eval/filters/extraction.py:L47-60), a choice's
text mapped to its letter, true/false to yes/no, number words to digits (GQA, RealWorldQA); then exact
match ignoring case and punctuation (e.g. ai2d_llava_plain.yaml:L14-26).

Bugs fixed (each at its place below): the letter check of the vision filters compares lowercased
text with capital letters and never matches (which changes scores where an AI2D question's options
are themselves letters: MLAN reads the answer "A" as an option's text, mlan as the letter); OpenBookQA's exact match is case-sensitive where the
other three language tasks ignore case; the language filter does not strip the continuation; the
first-listed choice wins when the words of several choices all appear; number words are mapped on
the prediction only ("none" -> "0" against a gold "none"); RealWorldQA and ScienceQA keep the
response's punctuation but drop the choices'. GQA and RealWorldQA's regex does not stop at a newline
(gqa_llava_plain.yaml:L27); here every vision task stops there, as POPE, AI2D and ScienceQA do.
"""

from __future__ import annotations

import re
import string

from mlan.schemas import LETTERS, Item

_VISION_ANSWER = re.compile(r'^([^.,:"\n\r]*)')
_NO_PUNCT = str.maketrans("", "", string.punctuation)
_TRUE_FALSE = {"true": "yes", "false": "no"}
# mlan@7ce179a:scripts/eval/custom/gqa/helper.py:L89-119 (Digit2NumberFilter).
_DIGITS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}


def mlan_answer(item: Item, response: str, modality: str) -> tuple[str, bool]:
    """(prediction, correct) of one response under MLAN's filters for `modality` (language or vision)."""
    if modality == "vision":
        return _vision(item, response)
    return _language(item, response)


# --------------------------------------------------------------------------- language


def _words(text: str) -> set[str]:
    # answermapping.py:L14-15 clean_response: punctuation out, lowercase, split on spaces.
    return set(re.sub(r"[^\w\s]", "", text).strip().lower().split())


def language_choice(response: str, choices: list[str]) -> str:
    """The letter a continuation picks (answermapping.py:L26-45), or the continuation itself."""
    labels = LETTERS[: len(choices)]
    if response.upper() in labels and len(response) == 1:
        return response.upper()
    said = _words(response)
    full = [i for i, c in enumerate(choices) if _words(c) and _words(c) <= said]
    if not full:
        return response
    # MLAN takes the first choice whose words all appear ("sea water" picks "water" when it is listed
    # first). Fixed: the choice that contains every other full match, else no pick.
    widest = max(full, key=lambda i: len(_words(choices[i])))
    if all(_words(choices[i]) <= _words(choices[widest]) for i in full):
        return labels[widest]
    return response


def _language(item: Item, response: str) -> tuple[str, bool]:
    # MLAN compares the continuation as generated: " B" (a leading space) was neither a letter nor
    # equal to "B". Fixed: stripped.
    text = response.strip()
    if item.kind == "mc":
        pred = language_choice(text, item.choices or [])
    elif item.kind == "yesno":  # lowercase, so that POPE-style counts of "yes" see "Yes"
        pred = _TRUE_FALSE.get(text.lower(), text.lower())
    else:
        pred = text
    # Case ignored for every task (openbookqa_em.yaml:L12-15 leaves it out, so "b" was wrong there only).
    return pred, pred.lower() == item.answer.strip().lower()


# --------------------------------------------------------------------------- vision


def vision_text(response: str) -> str:
    """The answer part of a response: up to the first `. , : "` or newline, stripped."""
    return _VISION_ANSWER.match(response).group(1).strip()


def _plain(text: str) -> str:
    # lm-eval's exact_match with ignore_case and ignore_punctuation; number words as digits on both
    # sides (MLAN mapped the prediction only). Differs from MLAN in order: punctuation is removed
    # before stripping, so the space a dropped mark leaves is stripped too. In MLAN the text was
    # stripped first (regex filter) and the exact match removes punctuation without stripping again:
    # "red -" became "red " and missed gold "red"; here it matches (tests/test_fidelity.py).
    text = text.lower().translate(_NO_PUNCT).strip()
    return _DIGITS.get(text, text)


def vision_choice(text: str, choices: list[str]) -> str:
    """The letter `text` names (the letter itself or a choice's whole text), or `text` itself
    (mlan@7ce179a:scripts/eval/custom/ai2d/helper.py:L78-108)."""
    labels = LETTERS[: len(choices)]
    # MLAN compares the lowercased text with "A".."D", which never matches. Mostly harmless: a letter
    # that is no option's text stays as written and passes the case-insensitive exact match anyway.
    # Not where the options are themselves letters (AI2D has such questions, e.g. options [C, D, A, B]
    # naming a diagram's labels): MLAN reads the answer "A" as the option text "A", i.e. letter C, and
    # scores it wrong against gold A, and the answer "C" (option text "C", letter A) right. Fixed: a
    # one-letter answer is the letter the prompt asks for ('The best answer is "'), so for that question
    # mlan scores "A" right and "C" wrong, the reverse of MLAN (tests/test_fidelity.py).
    if len(text) == 1 and text.upper() in labels:
        return text.upper()
    # RealWorldQA and ScienceQA drop the choices' punctuation but keep the response's
    # (realworldqa/helper.py:L127-134): "a dog." never met "a dog". Fixed: dropped on both sides.
    options = [c.lower().strip().translate(_NO_PUNCT) for c in choices]
    said = text.lower().strip().translate(_NO_PUNCT)
    return labels[options.index(said)] if said in options else text


def _vision(item: Item, response: str) -> tuple[str, bool]:
    text = vision_text(response)
    if item.kind == "mc":
        pred = vision_choice(text, item.choices or [])
    elif item.kind == "yesno":  # POPE lowercases its prediction (pope/helper.py:L74-76)
        pred = _TRUE_FALSE.get(text.lower(), text.lower())
    else:
        pred = _TRUE_FALSE.get(text.lower(), text)
        pred = _DIGITS.get(pred.lower(), pred)
    return pred, _plain(pred) == _plain(item.answer)
