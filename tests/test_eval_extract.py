"""Answer extraction on hard cases (no model needed)."""

from __future__ import annotations

import pytest

from mlan.evaluate.extract import extract_choice, extract_open, extract_yes_no, match_open, normalize
from mlan.evaluate.generate import cut_at_stop, score_items
from mlan.evaluate.tasks import Item

FOG = ["a marsh", "a tundra", "the plains", "a desert"]


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("B", "B"),
        (" B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B)", "B"),
        ("B:", "B"),
        ("[C]", "C"),
        ("**C**", "C"),
        ('"D"', "D"),
        ("b", "B"),
        ("(b)", "B"),
        ("Option D", "D"),
        ("option d", "D"),
        ("The answer is (B)", "B"),
        ("The best answer is C", "C"),
        ("Answer: B", "B"),
        ("I think C", "C"),
        ("C: the plains", "C"),
        ("B - a tundra", "B"),
        ("B tundra", "B"),
        ("A", "A"),
        ("A.", "A"),
        ("a", "A"),
    ],
)
def test_letter_forms(response, letter):
    assert extract_choice(response, FOG) == letter


@pytest.mark.parametrize(
    ("response", "choices", "letter"),
    [
        ("a marsh", FOG, "A"),
        ("A marsh", FOG, "A"),  # the article, and also choice A's text
        ("A tundra", FOG, "B"),  # the article "A" in front of choice B's text: not letter A
        ("The Plains", FOG, "C"),  # case-insensitive (the public scripts' mapping was not)
        ("desert", FOG, "D"),
        ("the plains, because fog", FOG, "C"),
        ("A dog", ["cat", "dog"], "B"),
        ("four", ["2", "4", "6"], "B"),  # number words to digits
        ("Four.", ["two", "four"], "B"),
        ("4", ["two", "four"], "B"),
        ("sea water", ["water", "sea water"], "B"),  # the longest containing choice wins
        ("Apostrophe", ["chiasmus", "apostrophe"], "B"),
    ],
)
def test_choice_text_and_numbers(response, choices, letter):
    assert extract_choice(response, choices) == letter


@pytest.mark.parametrize("response", ["", "   ", "I am not sure", "a cat and a dog", "E", "(F)", "Z"])
def test_no_choice(response):
    assert extract_choice(response, ["cat", "dog"]) is None


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("yes", "yes"),
        ("Yes, it is.", "yes"),
        ("No.", "no"),
        ("NO", "no"),
        ("There is no dog", "no"),
        ("True", "yes"),
        ("false", "no"),
        ("snow", None),
        ("none", None),
        ("nothing", None),
        ("Nobody knows", None),
        ("yesterday", None),
        ("eyes", None),
        ("", None),
    ],
)
def test_yes_no_whole_words_only(response, answer):
    assert extract_yes_no(response) == answer


def test_open_answers_and_stops():
    assert normalize("The Two cats!") == "2 cats"
    assert match_open("Two", "2") and match_open("the table.", "table") and not match_open("tables", "table")
    assert extract_open("The answer is: left") == "left"
    assert cut_at_stop(" A: a marsh", ["User:", ":", "."]) == " A"
    assert cut_at_stop("yes", ['"']) == "yes"


def test_pope_metrics_never_count_unreadable_as_yes():
    items = [Item(id=str(i), question="q", answer=a, kind="yesno") for i, a in enumerate(["yes", "yes", "no", "no"])]
    metrics, samples = score_items(items, ["Yes", "snow", "no", "yes"])
    assert [s["pred"] for s in samples] == ["yes", None, "no", "yes"]
    assert metrics["acc"] == 0.5
    assert metrics["precision"] == 0.5 and metrics["recall"] == 0.5 and metrics["f1"] == 0.5
    assert metrics["yes_ratio"] == 0.5
