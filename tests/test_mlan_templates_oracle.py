"""mlan's instruction phrases and rendered rows against MLAN's own code (tests/mlan_prompt_template.py, copied
from wang-research-lab/mlan@7ce179a8d6598142f0ba7038b6074c5fe1e4e766:llava/anno/prompt_template.py), not
against mlan's constants. Each row's expected text is also written out by hand, so that a wrong copy of
the authors' template code could not hide a wrong layout either. The differences mlan makes on purpose
(README.md, "Build a mixture") are asserted as differences."""

from __future__ import annotations

import mlan_prompt_template as authors
import pytest

from mlan.config.mixture import SourceSpec
from mlan.data.adapters import ADAPTER_FUNCS
from mlan.data.templates import (
    DIRECT_ANSWER,
    MULTIPLE_CHOICE,
    SHORT_ANSWER,
    TEMPLATES,
    YES_NO,
    render,
    template_text,
)
from mlan.schemas import Item


class Draws:
    """A stand-in for render's `random.Random`: `randrange` returns the given template numbers in turn and
    `random` the given coin, so a test chooses the phrases and whether the row gets its chain of thought."""

    def __init__(self, *nums: int, coin: float = 0.99) -> None:
        self.nums = list(nums)
        self.coin = coin

    def randrange(self, n: int) -> int:
        assert n == 20  # every list has twenty phrases
        return self.nums.pop(0)

    def random(self) -> float:
        return self.coin


def _render(item: Item, *nums: int, cot: bool = False) -> tuple[str, str, list[str]]:
    messages, ids = render(item, Draws(*nums, coin=0.0 if cot else 0.99), cot_share=0.5)
    return messages[0]["content"], messages[1]["content"], ids


def _authors(phrase: str, **row) -> tuple[str, str]:
    """(human, gpt) MLAN writes for one reader row with `phrase` as its `random.choice` draw."""
    authors.random.phrase = phrase
    return authors.format_llava_train(authors.format_input(**row))


def test_phrase_lists_are_mlans_word_for_word_in_order():
    assert list(MULTIPLE_CHOICE) == authors.mc_prompt
    assert list(YES_NO) == authors.tf_prompt
    assert list(SHORT_ANSWER) == authors.short_answer_prompt
    assert list(DIRECT_ANSWER) == authors.fa_prompt
    # Template ids (`<kind>/<index>`, recorded in the manifest) index the authors' lists.
    assert template_text("mc/13") == authors.mc_prompt[13] == "Which of these is the correct answer?"
    assert template_text("yesno/09") == authors.tf_prompt[9] == "Answer with 'yes' or 'no'."
    assert template_text("short/03") == authors.short_answer_prompt[3] == "Please answer the question briefly:"
    assert template_text("cot/08") == authors.fa_prompt[8] == "In short, the direct answer is:"
    assert set(TEMPLATES) == {"mc", "yesno", "short", "cot"}


# Each case: the item, the template numbers drawn, the chain of thought or not, MLAN's reader row, and the
# user and assistant turns written by hand from prompt_template.py L106-113 and evaluate_util.py L25-37/L101.
CONTEXT = "The book was written by Tolkien in 1937."
ROWS = {
    "short answer with context (SQuAD)": (
        Item("short", "Who wrote the book?", "Tolkien", "s1", context=CONTEXT),
        [3],
        False,
        {"context": CONTEXT, "question": "Who wrote the book?", "answer": "Tolkien"},
        "Context: The book was written by Tolkien in 1937.\nPlease answer the question briefly:\nWho wrote the book?",
        "Tolkien",
    ),
    "yes/no with context (StrategyQA)": (
        Item("yesno", "Is the sea salty?", "yes", "y1", context="Sea water holds salt."),
        [9],
        False,
        {"context": "Sea water holds salt.", "question": "Is the sea salty?", "answer": "yes"},
        "Context: Sea water holds salt.\nAnswer with 'yes' or 'no'.\nIs the sea salty?",
        "yes",
    ),
    "multiple choice (CommonsenseQA)": (
        Item("mc", "Where do fish live?", "B", "m1", choices=["in trees", "in water", "in the sky"]),
        [0],
        False,
        {"question": "Where do fish live?", "choices": ["A in trees", "B in water", "C in the sky"], "answer": "B"},
        "Where do fish live? Choose the correct answer from the following options:\nA in trees\nB in water\nC in the sky",
        "B",
    ),
    "multiple choice with context, chain of thought (CosmosQA)": (
        Item(
            "mc",
            "Why did she go?",
            "C",
            "m2",
            choices=["rain", "sun", "work", "fun"],
            context="She left.",
            rationale="She had a job to do.",
        ),
        [13, 8],
        True,
        {
            "context": "She left.",
            "question": "Why did she go?",
            "choices": ["A rain", "B sun", "C work", "D fun"],
            "answer": "C",
        },
        "Context: She left.\nWhy did she go? Which of these is the correct answer?\nA rain\nB sun\nC work\nD fun",
        "She had a job to do.\nIn short, the direct answer is: C.",
    ),
    "yes/no, chain of thought (StrategyQA)": (
        Item("yesno", "Can fish fly?", "no", "y2", rationale="Fish swim."),
        [19, 0],
        True,
        {"question": "Can fish fly?", "answer": "no"},
        "Your response should be 'yes' or 'no'.\nCan fish fly?",
        "Fish swim.\nTo sum up, the direct answer is: no.",
    ),
    "short answer, chain of thought (SQuAD)": (
        Item("short", "Who wrote the book?", "Tolkien", "s2", context=CONTEXT, rationale="The text names him."),
        [0, 19],
        True,
        {"context": CONTEXT, "question": "Who wrote the book?", "answer": "Tolkien"},
        "Context: The book was written by Tolkien in 1937.\nPlease provide a short answer to the question:\n"
        "Who wrote the book?",
        "The text names him.\nTo round off, the direct answer is: Tolkien.",
    ),
}


@pytest.mark.parametrize("case", list(ROWS))
def test_rendered_rows_equal_mlans(case):
    item, nums, cot, row, user_by_hand, assistant_by_hand = ROWS[case]
    row = dict(row)  # ROWS stays as written when the test runs again
    user, assistant, ids = _render(item, *nums, cot=cot)
    assert (user, assistant) == (user_by_hand, assistant_by_hand)
    assert ids == [f"{item.kind}/{nums[0]:02d}"] + ([f"cot/{nums[1]:02d}"] if cot else [])

    # The same row through the authors' code, with the phrases those ids name in the authors' lists.
    lists = {"short": authors.short_answer_prompt, "yesno": authors.tf_prompt, "mc": authors.mc_prompt}
    answer = row.pop("answer")
    if cot:
        answer = authors.cot_answer(item.rationale, authors.fa_prompt[nums[1]], answer)
    human, gpt = _authors(lists[item.kind][nums[0]], **row, answer=answer)
    assert gpt == assistant
    # Difference on purpose: MLAN's human value ends with the newline before "Assistant: "; mlan's does not.
    assert human == user + "\n"


def test_yes_no_template_by_kind_where_mlan_matches_a_substring():
    """MLAN takes the yes/no template when "yes" or "no" occurs in the answer's last word (evaluate_util.py
    L29-34): "snow" gets one; a capitalised "Yes" does not. mlan decides by the item's kind."""
    # "snow": MLAN's code draws from tf_prompt (authors.Pick refuses a phrase of another list).
    human, _ = _authors(authors.tf_prompt[9], question="What falls in winter?", answer="snow")
    assert human == "Answer with 'yes' or 'no'.\nWhat falls in winter?\n"
    user, assistant, ids = _render(Item("short", "What falls in winter?", "snow", "1"), 9)
    assert (user, assistant, ids) == ("Answer the question concisely:\nWhat falls in winter?", "snow", ["short/09"])
    # A VQAv2 yes/no answer spelled "Yes": MLAN's code draws a short-answer phrase.
    human, _ = _authors(authors.short_answer_prompt[9], question="Is it red?", answer="Yes")
    assert human == "Answer the question concisely:\nIs it red?\n"
    user, _, ids = _render(Item("yesno", "Is it red?", "Yes", "2"), 9)
    assert (user, ids) == ("Answer with 'yes' or 'no'.\nIs it red?", ["yesno/09"])


def test_arc_numbered_options_lettered_where_mlan_keeps_numbers():
    """ARC rows labelled 1-4: MLAN's reader (evaluate_util.py L294-297) writes `1 wood` and answers `2`;
    mlan letters the options and the answer (one scheme for every source)."""
    row = {
        "id": "arc1",
        "question": "Which of these is a metal",
        "choices": {"text": ["wood", "iron", "glass", "paper"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    }
    human, gpt = _authors(
        authors.mc_prompt[7],
        question=row["question"] + "...",  # L294: a stem that is no question gets "..."
        choices=[lab + " " + t for lab, t in zip(row["choices"]["label"], row["choices"]["text"], strict=True)],
        answer=row["answerKey"],
    )
    assert (human, gpt) == (
        "Which of these is a metal... Select the right answer from the options below:\n1 wood\n2 iron\n3 glass\n"
        "4 paper\n",
        "2",
    )
    item = ADAPTER_FUNCS["arc"](row, SourceSpec(name="arc", dataset="x", adapter="arc"))
    user, assistant, _ = _render(item, 7)
    assert (user, assistant) == (
        "Which of these is a metal... Select the right answer from the options below:\nA wood\nB iron\nC glass\n"
        "D paper",
        "B",
    )
