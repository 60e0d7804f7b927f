"""Answer extraction for the generate-then-match protocol.

A model's free-text answer is mapped to what it chose: a choice letter (written in any of
the usual forms, or as the choice's text, or as a number word for a number choice), a
yes/no (whole words only: "snow" and "none" are not answers), or a normalised short text.
Unlike the public MLAN scripts, matching is case-insensitive on both sides and yes/no is
never found inside another word.
"""

from __future__ import annotations

import re
import string

from mlan.schemas import LETTERS as _ALL_LETTERS

# Answers are read as one of at most ten options (A-J), the most any evaluated dataset has.
LETTERS = _ALL_LETTERS[:10]

NUMBER_WORDS = {
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
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
}
_ARTICLES = {"a", "an", "the"}
# Phrases a model puts in front of its pick; removed before looking for a leading letter.
_LEAD_IN = re.compile(
    r"^\s*(?:(?:the\s+)?(?:best|correct|right|final)?\s*(?:answer|option|choice)\s*(?:is|would be|:)?\s*"
    r"|(?:i\s+(?:think|choose|pick|would\s+choose)|my\s+answer\s+is)\s*(?:option|choice)?\s*"
    r"|(?:option|choice)\s+)",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Lowercase, number words to digits, punctuation and articles dropped, spaces collapsed."""
    text = text.lower().strip()
    text = text.translate(str.maketrans({c: " " for c in string.punctuation if c not in "%-"}))
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def _strip_wrappers(text: str) -> str:
    text = text.strip().strip("\"'`*").strip()
    for _ in range(3):
        new = _LEAD_IN.sub("", text, count=1).strip().strip("\"'`*:").strip()
        if new == text:
            break
        text = new
    return text


def extract_choice(response: str, choices: list[str]) -> str | None:
    """The letter (A, B, ...) that `response` picks among `choices`, or None.

    Handles "B", "(B)", "B.", "B)", "B: text", "**B**", "b", "Option B", "The answer is (B)",
    "Answer: B", the choice's text ("a marsh" for choice A "a marsh"), a number word for a
    number choice ("four" for "4"), and the article "A" in front of a choice's text
    ("A dog" picks "dog", not letter A).
    """
    if not response or not response.strip() or not choices:
        return None
    labels = LETTERS[: len(choices)]
    text = _strip_wrappers(response)
    norm_choices = [normalize(c) for c in choices]
    norm_resp = normalize(text)

    # 1. The whole answer is one choice's text.
    exact = [i for i, c in enumerate(norm_choices) if c and c == norm_resp]
    if len(exact) == 1:
        return labels[exact[0]]

    # 2. A letter on its own or in a letter form: "B", "(B)", "B.", "B)", "B:", "[B]", "B - text".
    m = re.match(r"^[\(\[]?([A-Ja-j])(?:[\)\]]|(?=[.:,;\-]|\s*$))", text)
    if m and m.group(1).upper() in labels:
        letter = m.group(1).upper()
        rest = text[m.end() :].strip(" .:)-]")
        # A lowercase letter followed by words is a word ("a dog"), not a pick.
        if m.group(1).isupper() or not rest or text[m.end() : m.end() + 1] in ").]:":
            return letter
    # "B dog" (letter then that choice's text) or a bare capital letter followed by words.
    m = re.match(r"^([A-J])\s+(.*)$", text, re.DOTALL)
    if m and m.group(1) in labels:
        letter, rest = m.group(1), normalize(m.group(2))
        idx = labels.index(letter)
        if rest and norm_choices[idx] and rest.startswith(norm_choices[idx]):
            return letter
        if letter != "A":  # only "A" doubles as an English word
            return letter

    # 3. A letter in brackets or after "answer is"/"option" anywhere.
    m = re.search(r"\(([A-J])\)", text) or re.search(
        r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\b(?![\w'])", text, re.IGNORECASE
    )
    if m and m.group(1).upper() in labels:
        return m.group(1).upper()

    # 4. The text of exactly one choice appears as whole words (the longest wins when one contains another).
    hits = [i for i, c in enumerate(norm_choices) if c and re.search(rf"(?<!\S){re.escape(c)}(?!\S)", norm_resp)]
    if hits:
        longest = max(hits, key=lambda i: len(norm_choices[i]))
        if all(i == longest or norm_choices[i] in norm_choices[longest] for i in hits):
            return labels[longest]
        return None

    # 5. The answer begins with a choice's text ("marsh, because fog forms over water").
    starts = [i for i, c in enumerate(norm_choices) if c and norm_resp.startswith(c)]
    if len(starts) == 1:
        return labels[starts[0]]

    # 6. A bare "A" followed by words that name no choice: the letter A after all.
    m = re.match(r"^A\b", text)
    if m and "A" in labels:
        return "A"
    return None


def extract_yes_no(response: str) -> str | None:
    """ "yes" or "no" from the first whole word yes/no (true/false count too), else None.

    "snow", "none", "nothing", "notable", "yesterday" are not answers.
    """
    if not response:
        return None
    m = re.search(r"\b(yes|no|true|false)\b", response, re.IGNORECASE)
    if not m:
        return None
    return "yes" if m.group(1).lower() in ("yes", "true") else "no"


def extract_open(response: str) -> str:
    """A short free answer, normalised for exact match (number words as digits, no articles)."""
    text = _strip_wrappers(response)
    return normalize(text)


def match_open(response: str, gold: str) -> bool:
    """Exact match of a normalised short answer against the normalised gold answer."""
    return extract_open(response) == normalize(gold)


def extract_exact(response: str) -> str:
    """A whole short answer for exact match: lowercase, surrounding quotes and trailing punctuation
    removed, spaces collapsed. Unlike `extract_open`, words are kept as written (no articles or
    lead-ins dropped, no number words mapped): the answer must be exactly the target."""
    text = " ".join(response.lower().split())
    return text.strip("\"'`*").strip().rstrip(".,;:!?").strip().strip("\"'`*").strip()
