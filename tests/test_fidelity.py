"""Where mlan's scoring and Wings' initialisation differ from the published code, shown case by case
(each difference is also described at its place in the code)."""

from __future__ import annotations

import string

import torch

from mlan.evaluate.extract_mlan import mlan_answer
from mlan.evaluate.generate import score_items
from mlan.schemas import Item

AI2D_LETTER_OPTIONS = Item(kind="mc", question="Which label marks the sun?", answer="A", id="1", choices=list("CDAB"))


def _mlan_ai2d(response: str, choices: list[str]) -> str:
    """MLAN's AI2D filters as published (mlan@7ce179a:scripts/eval/custom/ai2d/helper.py:L78-108 after
    the `regex` filter), the prediction before exact match."""
    raw = response.split(".")[0].split(",")[0].split(":")[0].split('"')[0].split("\n")[0].strip()
    drop = str.maketrans("", "", string.punctuation)
    options = [c.lower().strip().translate(drop) for c in choices]
    resp = raw.lower().strip().translate(drop)
    if resp in ["A", "B", "C", "D"]:  # lowercased text against capitals: never true
        return resp
    if resp in options:
        return ["A", "B", "C", "D"][options.index(resp)]
    return raw


def test_ai2d_letter_options_read_as_letters_not_as_option_text():
    """Options [C, D, A, B], gold A: MLAN reads the answer "A" as the option text "A" (letter C) and
    scores it wrong, "C" (option text, letter A) right; mlan reads a one-letter answer as the letter."""
    item = AI2D_LETTER_OPTIONS
    assert _mlan_ai2d("A", item.choices) == "C" and _mlan_ai2d("C", item.choices) == "A"  # MLAN
    assert mlan_answer(item, "A", "vision") == ("A", True)
    assert mlan_answer(item, 'C"', "vision") == ("C", False)
    metrics, _ = score_items([item, item], ["A", "C"], extraction="mlan", modality="vision")
    assert metrics["acc"] == 0.5  # MLAN: 0.5 too, but from the other answer
    # Options that are not letters: a letter and an option's text both read as MLAN reads them.
    plain = Item(kind="mc", question="q", answer="B", id="2", choices=["sun", "moon", "earth", "star"])
    assert mlan_answer(plain, "B", "vision") == ("B", True)
    assert mlan_answer(plain, "moon", "vision") == ("B", True)
    assert _mlan_ai2d("moon", plain.choices) == "B"


def test_punctuation_removed_before_stripping():
    """MLAN stripped the answer first and then removed punctuation in exact match, so "red -" became
    "red " and missed "red"; mlan removes punctuation, then strips: "red -" matches."""
    item = Item(kind="short", question="What color is the car?", answer="red", id="3")
    assert mlan_answer(item, "red -", "vision")[1]
    assert mlan_answer(item, "red", "vision")[1]
    assert not mlan_answer(item, "dark red", "vision")[1]


def test_pope_invalid_answer_is_a_miss():
    """An answer that is neither yes nor no: wrong, not "yes", and a false negative when gold is yes
    (MLAN's recall left it out: recall 1.0 there, 0.5 here)."""
    items = [
        Item(kind="yesno", question=f"Is there a dog? {i}", answer=a, id=str(i)) for i, a in enumerate(["yes", "yes"])
    ]
    metrics, samples = score_items(items, ["yes", "maybe"], extraction="mlan", modality="vision")
    assert [s["correct"] for s in samples] == [True, False]
    assert metrics["acc"] == 0.5 and metrics["precision"] == 1.0 and metrics["recall"] == 0.5
    assert metrics["yes_ratio"] == 0.5


def test_learner_init_follows_wings():
    """LoRRA's A as Wings' `trunc_normal_(std=.02)`, which cuts at +-2 absolute (100 std): in effect an
    untruncated normal, so values beyond 2 std occur (about 4.6% of them); B starts at zero."""
    from mlan.wings.lorra import LoRRA

    torch.manual_seed(0)
    lorra = LoRRA(hidden=256, heads=4, head_dim=64, rank=64, init_std=0.02)
    a = torch.cat([getattr(lorra, f"{n}_a").detach().flatten() for n in "qkvo"])
    beyond = (a.abs() > 0.04).float().mean().item()
    assert 0.03 < beyond < 0.06, beyond
    assert abs(a.std().item() - 0.02) < 0.001
    assert all(torch.count_nonzero(getattr(lorra, f"{n}_b")) == 0 for n in "qkvo")


def test_router_init_is_documented_not_wings():
    """The router keeps mlan's init (weight normal cut at 2 std, bias 0; see mlan/wings/router.py), not
    nn.Linear's default that Wings' ReweightLinear keeps: no random bias, so a new router weighs both
    learners alike on features that are all zero."""
    from mlan.wings.router import Router

    torch.manual_seed(0)
    router = Router(64, init_std=0.02)
    assert torch.count_nonzero(router.proj.bias) == 0
    assert router.proj.weight.abs().max().item() <= 0.04
    weights = router(torch.zeros(1, 3, 64), torch.tensor([True]))
    assert torch.allclose(weights, torch.full((1, 3, 2), 0.5))
