"""Golden tests: for one real row of each MLAN training source, the user and assistant turns mlan renders
equal what MLAN's own data preparation writes for the same instruction and phrase, with the differences
mlan makes on purpose spelled out."""

from __future__ import annotations

import json
import random

import mlan_prompt_template as authors
import pytest

from mlan.data.adapters import ADAPTER_FUNCS
from mlan.data.templates import render
from mlan.schemas import LETTERS

# MLAN's side comes from tests/mlan_prompt_template.py: the authors' phrase lists and LLaVA templates
# (wang-research-lab/mlan@7ce179a8d6598142f0ba7038b6074c5fe1e4e766:llava/anno/prompt_template.py
# L10-113) copied there as written, never from mlan.data.templates. `authors.random` is the test's stand-in
# for the `random` module: it makes the phrase a template draws the one set in `authors.random.phrase`,
# after checking that it is in the list the authors' template draws from.
AUTHORS_LISTS = {
    "mc": authors.mc_prompt,
    "yesno": authors.tf_prompt,
    "short": authors.short_answer_prompt,
    "cot": authors.fa_prompt,
}


def mlan_turns(context: str, question: str, choices: list[str], answer: str, yes_no: bool) -> tuple[str, str]:
    """MLAN's human and gpt values: `format_input` (llava/anno/evaluate_util.py L25-37, with the yes/no
    choice made by the item's kind, not by substring) then `format_llava_train`
    (ToviTu/IT_MLLM@db5622b4:scripts/anno/prepare_lang_it.py L30-37)."""
    if choices:
        text = authors.llava_cmc(context, choices, question, answer)
    elif yes_no:
        text = authors.llava_tfq(context, question, answer)
    else:
        text = authors.llava_srq(context, question, answer)
    return authors.format_llava_train(text)


def llava_preprocess_multimodal(value: str) -> str:
    """LLaVA moves the image to the front (haotian-liu/LLaVA@c121f04:llava/train/train.py L318-321)."""
    value = value.replace("<image>", "").strip()
    return ("<image>\n" + value).strip()


# --- each source's row as MLAN's readers build it (llava/anno/evaluate_util.py) ----------------------------


def _arc_stem(stem: str) -> str:
    return stem + "..." if stem[-1] != "?" else stem  # L294


MLAN_FIELDS = {
    # source: (bundled file, row -> (context, question, choices, answer, yes/no))
    "squad": (
        "squad/validation.jsonl",
        lambda r: (r["context"], r["question"], [], r["answers"]["text"][0], False),  # L124-129
    ),
    "strategyqa": (
        "strategyqa/train.jsonl",
        lambda r: (" ".join(r["facts"]), r["question"], [], "yes" if r["answer"] else "no", True),  # L191-196
    ),
    "commonsense_qa": (
        "commonsense_qa/train.jsonl",
        lambda r: (
            "",
            r["question"],
            [lab + " " + t for lab, t in zip(r["choices"]["label"], r["choices"]["text"], strict=True)],  # L239
            r["answerKey"],
            False,
        ),
    ),
    "cosmos_qa": (
        "cosmos_qa/validation.jsonl",
        lambda r: (
            r["context"],
            r["question"],
            [f"{L} {r[f'answer{i}']}" for i, L in enumerate("ABCD")],  # L263-268
            "ABCD"[r["label"]],
            False,
        ),
    ),
    "arc": (
        "arc_challenge/train.jsonl",
        lambda r: (
            "",
            _arc_stem(r["question"]),
            [lab + " " + t for lab, t in zip(r["choices"]["label"], r["choices"]["text"], strict=True)],  # L295
            r["answerKey"],
            False,
        ),
    ),
    "vqav2": (
        "vqav2/train.jsonl",
        lambda r: ("", "<image>\n" + r["question"], [], r["multiple_choice_answer"], r["answer_type"] == "yes/no"),
    ),
    "aokvqa": (
        "aokvqa/train.jsonl",
        lambda r: (
            "",
            "<image>\n" + r["question"],
            [f"{'ABCDE'[i]} {c}" for i, c in enumerate(r["choices"])],  # L386
            "ABCDE"[r["correct_choice_idx"]],
            False,
        ),
    ),
}


def _rows(shared_data, path: str) -> list[dict]:
    rows = [json.loads(line) for line in (shared_data / path).read_text().splitlines()]
    # ARC rows with `1..4` labels are re-lettered by mlan (tested below); the golden rows use letters.
    return [
        r for r in rows if "choices" not in r or not isinstance(r["choices"], dict) or r["choices"]["label"][0] == "A"
    ]


@pytest.mark.parametrize("source", list(MLAN_FIELDS))
@pytest.mark.parametrize("cot", [False, True])
def test_rendered_rows_equal_mlans(shared_data, source, cot):
    from mlan.config.mixture import SourceSpec

    path, fields = MLAN_FIELDS[source]
    src = SourceSpec(name=source, dataset="x", adapter=source)
    checked = 0
    for i, row in enumerate(_rows(shared_data, path)[:8]):
        item = ADAPTER_FUNCS[source](row, src)
        if cot:
            item.rationale = "  Step one. Step two.  "
        messages, ids = render(item, random.Random(i), cot_share=1.0 if cot else 0.0)
        user, assistant = messages[0]["content"], messages[1]["content"]
        context, question, choices, answer, yes_no = fields(row)
        if cot:  # L101: rationale + "\n<phrase> " + answer + "."
            assert ids[1].startswith("cot/")
            answer = authors.cot_answer(item.rationale.strip(), AUTHORS_LISTS["cot"][int(ids[1][4:])], answer)
        kind, num = ids[0].split("/")
        authors.random.phrase = AUTHORS_LISTS[kind][int(num)]  # the phrase mlan's template id names
        human, gpt = mlan_turns(context, question, choices, answer, yes_no)
        assert gpt == assistant
        if "<image>" in human:
            # Vision: the image goes first (LLaVA; TRL and mlan's template likewise). MLAN's short-answer
            # rows keep a blank line where `<image>\n` was cut out of `<instruction>\n<image>\n<question>`;
            # mlan's have none.
            expected = llava_preprocess_multimodal(human).removeprefix("<image>\n").replace(":\n\n", ":\n", 1)
            expected = expected.replace(".\n\n", ".\n", 1)
        else:
            # Text rows: MLAN's human value ends with the newline that preceded "Assistant: "; mlan's does not.
            assert human.endswith("\n")
            expected = human[:-1]
        assert user == expected, (source, i)
        checked += 1
    assert checked == 8


def test_options_are_relettered_where_mlan_keeps_arcs_numbers(shared_data):
    """ARC rows labelled 1-4: MLAN writes `1 text` and answers `1`; mlan letters them A-D (one scheme for
    every source, and the letters the evaluation extracts)."""
    from mlan.config.mixture import SourceSpec

    rows = [json.loads(line) for line in (shared_data / "arc_easy/train.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["choices"]["label"][0] == "1")
    item = ADAPTER_FUNCS["arc"](row, SourceSpec(name="arc", dataset="x", adapter="arc"))
    user, target = (m["content"] for m in render(item, random.Random(0), 0.0)[0])
    assert target == LETTERS[row["choices"]["label"].index(row["answerKey"])]
    assert "\nA " + row["choices"]["text"][0] in user and "\n1 " not in user


def test_yes_no_template_follows_the_question_kind_not_a_substring():
    """MLAN picks the yes/no template when "yes" or "no" occurs in the target's last word, so "piano"
    got "Answer with 'yes' or 'no'."; mlan decides by the item's kind."""
    from mlan.schemas import Item

    for answer in ("piano", "snow", "Nottingham"):
        user = render(Item("short", "What is it?", answer, "1"), random.Random(0), 0.0)[0][0]["content"]
        assert not any(t in user for t in authors.tf_prompt)
        assert any(user.startswith(t + "\n") for t in authors.short_answer_prompt)
    user = render(Item("yesno", "Is it?", "no", "2"), random.Random(0), 0.0)[0][0]["content"]
    assert any(user.startswith(t + "\n") for t in authors.tf_prompt)


def test_vqav2_trains_on_multiple_choice_answer():
    from mlan.schemas import SCHEMAS

    row = {
        "question": "What is on the plate?",
        "image": "x.jpg",
        "question_id": 7,
        "multiple_choice_answer": "pizza",
        "answers": ["cake", "cake", "cake", "pizza"],  # the most common answer differs: MLAN uses the column
    }
    assert SCHEMAS["vqav2"](row).answer == "pizza"
    assert SCHEMAS["vqav2"]({**row, "multiple_choice_answer": None}).answer == "cake"
    assert SCHEMAS["vqav2"]({**row, "multiple_choice_answer": "Yes"}).kind == "yesno"


# The phrase lists themselves, word for word and in order: tests/test_mlan_templates_oracle.py.


def test_render_gives_a_user_then_an_assistant_turn():
    """The roles of a rendered row (found by mutation testing, docs/mutation.md): the chat template reads them."""
    from mlan.schemas import Item

    item = Item("short", "What is the capital of France?", "Paris", "1", rationale="It is the capital.")
    for cot_share in (0.0, 1.0):
        messages, ids = render(item, random.Random(0), cot_share)
        assert [m["role"] for m in messages] == ["user", "assistant"] and len(ids) == 1 + int(cot_share)
