"""MLAN's evaluation protocol checked against the authors' code, offline and without a model.

Golden prompts: for one row of each unseen task, the exact string mlan builds equals the string
MLAN's own function builds for that row. The expected strings were produced by running the authors'
functions (sources below, pinned by commit) on these rows and are copied here verbatim. Rows: real
bundled slices (mlan/assets/data: OpenBookQA, BoolQ, POPE) or tests/evaldata.py's rows.

Sources:
  LM   = wang-research-lab/lm_eval@6f81a6b      (MLAN's lm-evaluation-harness fork: language tasks)
  MLAN = wang-research-lab/mlan@7ce179a         (scripts/eval/custom/*: vision tasks, llava_plain)
  LMMS = wang-research-lab/lmms-eval@b218a48    (the llava_plain model that runs them)
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest
from evaldata import AI2D_ROWS, GQA_ROWS, HELLASWAG_ROWS, RACE_ROWS, REALWORLDQA_ROWS, SCIENCEQA_ROWS
from PIL import Image

from mlan.evaluate import load_suite
from mlan.evaluate.generate import Request, build_prompt, run_generate_task
from mlan.evaluate.tasks import TaskData, to_items

DATA = Path(__file__).resolve().parents[1] / "mlan" / "assets" / "data"
# MLAN@7ce179a:llava/conversation.py:L242-251 (conv_vicuna_v1.system).
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
IMAGE = Image.new("RGB", (8, 8))


def _line(path: str, k: int) -> dict:
    return json.loads((DATA / path).read_text(encoding="utf-8").splitlines()[k])


def _items(suite, task: str, rows: list[dict]):
    t = suite.task(task)
    return t, to_items(t, TaskData(rows=rows, source="test"))


def _prompt(suite_name: str, task: str, rows: list[dict]) -> str:
    suite = load_suite(suite_name)
    t, items = _items(suite, task, rows)
    assert len(items) == 1
    return build_prompt(items[0], t, suite, None)


# (suite, task, rows, expected string, where MLAN builds it)
GOLDEN = [
    (
        "unseen_language", "race_high", RACE_ROWS[:2],  # one article, two questions: race_em asks the last
        "User: Context: Tom went to the market on Monday. He bought apples and bread, then walked home in the rain.\n"
        "Question: What was the weather like when Tom walked home?\nChoose the best option from the choices "
        'provided:\nA: rainy\nB: sunny\nC: snowy\nD: windy\nAssistant: The best answer is"',
        "LM:lm_eval/tasks/race/preprocess_race.py:L8-9 (last_problem), L36-44 (doc_prompt)",
    ),
    (
        "unseen_language", "openbookqa", [_line("openbookqa/test.jsonl", 102)],
        "User: Pollinators Choose the best option from the choices provided:\nA: enable plants to continue "
        "flourishing\nB: play an unimportant role in the reproduction process\nC: are useless to plants\n"
        'D: are considered unwanted pests\nAssistant: The best answer is"',
        "LM:lm_eval/tasks/openbookqa/helper.py:L1-7 (openbookqa_prompt)",
    ),
    (
        "unseen_language", "boolq", [_line("boolq/validation.jsonl", 106)],
        "User: Context: Gamblers' winnings in Australia are not taxed . There are 3 main reasons for that:\n"
        "Question: do you pay tax on gambling winnings in australia?\nPlease answer the question with 'yes' or "
        "'no'.\nAssistant: The best answer is\"",
        "LM:lm_eval/tasks/boolq/helper.py:L3-7 (boolq_prompt)",
    ),
    (
        "unseen_language", "hellaswag", HELLASWAG_ROWS[:1],
        "User: Roof shingle removal: A man is sitting on a roof. He Choose the best option from the choices "
        "provided to complete the sentence:\nA: is using wrap to wrap a pair of skis.\nB: is ripping level tiles "
        "off.\nC: is holding a rubik's cube.\nD: starts pulling up roofing on a roof.\nAssistant: The best answer "
        'is"',
        "LM:lm_eval/tasks/hellaswag/utils.py:L27-49 (process_docs_em)",
    ),
    (
        "unseen_vision", "pope", [{**_line("pope_coco/random.jsonl", 0), "image": IMAGE}],
        f'<image>\n{SYSTEM} USER: Please answer with "yes" or "no":\nIs there a snowboard in the image?\n '
        'ASSISTANT: The best answer is "',
        "MLAN:scripts/eval/custom/pope/helper.py:L63-72; `<image>\\n` first: LMMS:lmms_eval/models/llava_plain.py:L337-346",
    ),
    (
        "unseen_vision", "ai2d", [{**AI2D_ROWS[0], "image": IMAGE}],
        f"<image>\n{SYSTEM} USER: What does the picture show? Choose the best option from below:\nA: coins\n"
        'B: a cat\nC: a tree\nD: a car\n ASSISTANT: The best answer is "',
        "MLAN:scripts/eval/custom/ai2d/helper.py:L15-21, L66-76; LMMS:lmms_eval/models/llava_plain.py:L337-346",
    ),
    (
        "unseen_vision", "gqa", [{**GQA_ROWS[0], "image": IMAGE}],
        f"<image>\n{SYSTEM} USER: Please provide a short answer to the question: Who is holding the camera?\n "
        'ASSISTANT: The best answer is "',
        "MLAN:scripts/eval/custom/gqa/helper.py:L74-87; LMMS:lmms_eval/models/llava_plain.py:L337-346",
    ),
    (
        "unseen_vision", "gqa", [{**GQA_ROWS[2], "image": IMAGE}],
        f'<image>\n{SYSTEM} USER: Please answer the question with "yes" or "no". Is the man ironing?\n '
        'ASSISTANT: The best answer is "',
        "MLAN:scripts/eval/custom/gqa/helper.py:L74-87 (gold answer yes/no)",
    ),
    (
        "unseen_vision", "realworldqa", [{**REALWORLDQA_ROWS[0], "image": IMAGE}],
        f"{SYSTEM} USER: <image>\nWhat is in the sky? Choose the best option from below:\nA: A rocket\nB: A bird\n"
        'C: A kite\n ASSISTANT: The best answer is "',
        "MLAN:scripts/eval/custom/realworldqa/helper.py:L16-44, L99-115 (`<image>` inside the turn, L109)",
    ),
    (
        "unseen_vision", "realworldqa", [{**REALWORLDQA_ROWS[2], "image": IMAGE}],
        f"{SYSTEM} USER: <image>\nPlease provide a short answer to the question: How many rows of coins are there? "
        'Please answer directly with a single number.\n ASSISTANT: The best answer is "',
        "MLAN:scripts/eval/custom/realworldqa/helper.py:L99-115",
    ),
    (
        "unseen_vision", "scienceqa", [{**SCIENCEQA_ROWS[1], "image": IMAGE}],  # pid 9002: hint and image
        f"<image>\n{SYSTEM} USER: Context: The picture shows a rocket lifting off from a launch pad.\nQuestion: "
        "Which force pulls the rocket back toward Earth? Choose the best option from below:\nA: gravity\n"
        'B: magnetism\nC: friction\n ASSISTANT: The answer is "',
        "MLAN:scripts/eval/custom/sciq/helper.py:L17-24, L77-90; LMMS:lmms_eval/models/llava_plain.py:L337-346",
    ),
    (
        "unseen_vision", "scienceqa", [SCIENCEQA_ROWS[5]],  # pid 9102: text only, so no `<image>`
        f"{SYSTEM} USER: Context: Omar heats a pot of soup on the stove.\nQuestion: Is the steam above a pot of "
        "soup a solid, a liquid, or a gas? Choose the best option from below:\nA: a solid\nB: a liquid\n"
        'C: a gas\n ASSISTANT: The answer is "',
        "MLAN:scripts/eval/custom/sciq/helper.py:L77-90",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("suite", "task", "rows", "expected", "source"), GOLDEN)
def test_golden_prompts(suite, task, rows, expected, source):
    assert _prompt(suite, task, rows) == expected, source


def test_hellaswag_markup_is_preprocessed_as_mlan():
    """A row with WikiHow markup: ctx_b capitalised (the rest lowercased), the raw endings in the
    query, then the whole query preprocessed (LM:lm_eval/tasks/hellaswag/utils.py:L6-12, L27-46)."""
    row = {
        "ind": 1, "activity_label": "Home and Garden", "label": "1",
        "ctx_a": "[header] How to plant tomatoes [title] Pick a sunny spot.", "ctx_b": "[step] Dig A hole",
        "endings": ["[substeps] water it  twice.", " [title] Add compost.", "sing to it.", "leave [it] alone."],
    }  # fmt: skip
    assert _prompt("unseen_language", "hellaswag", [row]) == (
        "User: Home and Garden: How to plant tomatoes. Pick a sunny spot. dig a hole Choose the best option "
        "from the choices provided to complete the sentence:\nA: water it twice.\nB: . Add compost.\n"
        'C: sing to it.\nD: leave alone.\nAssistant: The best answer is"'
    )


def test_yes_no_wording_by_whole_answer():
    """MLAN picks GQA's yes/no wording by `"no" in answer` (MLAN:scripts/eval/custom/gqa/helper.py:L77), so a
    gold "snow" got 'Please answer the question with "yes" or "no".'; mlan reads the whole answer."""
    p = _prompt("unseen_vision", "gqa", [{"id": "1", "question": "What is on the ground?", "answer": "snow"}])
    assert "Please provide a short answer to the question: What is on the ground?\n" in p and '"no"' not in p


def test_same_prompt_for_every_model_and_chat_option():
    """vicuna_v1 does not ask the model for its template (a stage-1 folder and a tuned one get the same
    text); `prompt.style: chat` keeps the model's own template as an option."""
    suite = load_suite("unseen_vision")
    t, (item,) = _items(suite, "ai2d", [{**AI2D_ROWS[0], "image": IMAGE}])
    assert build_prompt(item, t, suite, lambda m: 1 / 0) == build_prompt(item, t, suite, None)
    chat = suite.model_copy(update={"prompt": suite.prompt.model_copy(update={"style": "chat"})})
    assert build_prompt(item, t, chat, lambda m: "<MODEL TEMPLATE>") == '<MODEL TEMPLATE> The best answer is "'


# --------------------------------------------------------------------------- scoring as MLAN's pipeline


class Fixed:
    """A scripted generator: one fixed continuation per request, in order."""

    multimodal = True

    def __init__(self, responses):
        self.responses = list(responses)

    def generate(self, requests: list[Request], *, max_new_tokens, stop):
        return [self.responses.pop(0) for _ in requests]


def mlan_language(response: str, labels: list[str], texts: list[str], gold: str, ignore_case: bool) -> bool:
    """MLAN's language pipeline on one continuation, ported from its sources: lm-eval cuts at each stop
    (LM:lm_eval/models/huggingface.py:L1275-1280), `answermapping` (LM:lm_eval/filters/answermapping.py:L13-45),
    exact_match (LM:lm_eval/api/metrics.py:L188-206; ignore_case per task yaml)."""
    for term in ["User:", '"', ":", ".", ","]:  # LM:lm_eval/tasks/openbookqa/openbookqa_em.yaml:L16-22
        response = response.split(term)[0]

    def words(s):
        return set(re.sub(r"[^\w\s]", "", s).strip().lower().split())

    pred = response
    if response not in labels:
        best = 0
        for label, text in zip(labels, texts, strict=True):
            score = len(words(response) & words(text)) / len(words(text)) if words(text) else 0
            if score > best:
                best, pred = score, (label if score >= 1.0 else response)
    return pred.lower() == gold.lower() if ignore_case else pred == gold


def mlan_ai2d(response: str, choices: list[str], gold: str) -> bool:
    """MLAN's AI2D pipeline: no stop cut (LMMS:lmms_eval/models/llava_plain.py:L398-405), the regex filter
    (MLAN:scripts/eval/custom/ai2d/ai2d_llava_plain.yaml:L20-26; LMMS:lmms_eval/filters/extraction.py:L47-60),
    AnswerMappingFilter (MLAN:scripts/eval/custom/ai2d/helper.py:L78-108), exact match ignoring case and
    punctuation after strip (LMMS:lmms_eval/api/task.py:L1149-1150)."""
    found = re.compile(r'^([^\.,:"\n\r]*)').findall(response)
    text = found[0].strip() if found else "[invalid]"
    punct = str.maketrans("", "", string.punctuation)
    opts = [c.lower().strip().translate(punct) for c in choices]
    said = text.lower().strip().translate(punct)
    pred = "ABCD"[opts.index(said)] if said in opts else text
    return pred.strip().lower().translate(punct) == gold.lower().translate(punct)


SCRIPTED = ['B"', '"B"', "B.", ": B", "B", "b", "Quit eating lunch out", "quit eating lunch out.", "B)"]


def test_scripted_language_scores_as_mlan():
    """OpenBookQA row 0 (gold B): `B"`, `"B"`, `B.`, `: B` and more score what MLAN's pipeline scores;
    the one difference is a case bug MLAN has on OpenBookQA only (its yaml leaves out ignore_case)."""
    suite = load_suite("unseen_language")
    row = _line("openbookqa/test.jsonl", 0)
    t, items = _items(suite, "openbookqa", [row] * len(SCRIPTED))
    _, samples = run_generate_task(t, suite, items, Fixed(SCRIPTED))
    ours = [s["correct"] for s in samples]
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    for ignore_case in (True, False):  # RACE/BoolQ/HellaSwag ignore case, OpenBookQA does not
        theirs = [mlan_language(r, labels, texts, "B", ignore_case) for r in SCRIPTED]
        diff = [r for r, a, b in zip(SCRIPTED, ours, theirs, strict=True) if a != b]
        assert diff == ([] if ignore_case else ["b"]), ignore_case
    assert ours[:4] == [True, False, True, False]


def test_scripted_vision_scores_as_mlan():
    """AI2D (gold A "coins"): MLAN's model does not cut at stops, its regex does; the same scores."""
    suite = load_suite("unseen_vision")
    responses = ['A"', '"A"', "A.", ": A", "a", "Coins", "coins.", "A) coins", "A\nB", "the coins"]
    t, items = _items(suite, "ai2d", [{**AI2D_ROWS[0], "image": IMAGE}] * len(responses))
    _, samples = run_generate_task(t, suite, items, Fixed(responses))
    theirs = [mlan_ai2d(r, AI2D_ROWS[0]["options"], "A") for r in responses]
    assert [s["correct"] for s in samples] == theirs
    assert theirs[:4] == [True, False, True, False]


def test_mlan_filter_bugs_fixed():
    """One input per fix in mlan.evaluate.extract_mlan that reaches the fixed line, so that undoing any one
    fix fails here (checked by reverting each in turn). Predictions are asserted as well as scores where a
    fix changes the prediction only."""
    from mlan.evaluate.extract_mlan import language_choice, mlan_answer
    from mlan.schemas import Item

    mc = Item("mc", "q", "B", "1", choices=["water", "sea water", "sand"])
    # Several full matches: the widest, not the first listed (MLAN: "water", A).
    assert language_choice("sea water", mc.choices) == "B"
    assert language_choice("water and sand", mc.choices) == "water and sand"  # two choices: no pick
    # The language continuation is stripped (MLAN: " B" is not "B").
    assert mlan_answer(mc, " B", "language") == ("B", True)
    # Case: MLAN's OpenBookQA is case-sensitive. A lowercase letter is read as the letter...
    assert mlan_answer(mc, "b", "language") == ("B", True)
    # ... and the exact match ignores case for every item, not only where a letter was read.
    assert mlan_answer(Item("short", "q", "Paris", "5"), "paris", "language") == ("paris", True)
    # Vision letters are read case-insensitively (MLAN compares the lowercased text with "A".."D", so the
    # prediction stayed "b"; the score was right through the case-insensitive match).
    assert mlan_answer(mc, "b", "vision") == ("B", True)
    # Punctuation dropped from the response as from the choices. The regex already cuts at . , : " so
    # "sea water." never reaches that line; "!" and an apostrophe do.
    assert mlan_answer(mc, "sea water.", "vision") == ("B", True)
    assert mlan_answer(mc, "sea water!", "vision") == ("B", True)
    owner = Item("mc", "Whose bowl?", "B", "6", choices=["the cat's bowl", "the dog's bowl"])
    assert mlan_answer(owner, "the dog's bowl", "vision") == ("B", True)
    # Number words as digits on both sides (MLAN: "None" -> "0" against gold "none").
    count = Item("short", "How many?", "none", "2")
    assert mlan_answer(count, "None", "vision")[1]
    assert mlan_answer(Item("short", "q", "2", "3"), "two", "vision")[1]
    # Every vision answer ends at a newline (MLAN's GQA and RealWorldQA regex read on to the full stop).
    assert mlan_answer(Item("short", "How many?", "2", "7"), "2\nThere are two.", "vision") == ("2", True)
    assert mlan_answer(Item("yesno", "q", "yes", "4"), "True", "language") == ("yes", True)


def test_pope_yes_ratio_is_the_models():
    """MLAN's yes-ratio counts the gold answers (MLAN:scripts/eval/custom/pope/helper.py:L131-141); mlan's
    counts the predictions: a model that always says yes has yes-ratio 1."""
    suite = load_suite("unseen_vision")
    rows = [{**json.loads(x), "image": IMAGE} for x in (DATA / "pope_coco/random.jsonl").read_text().splitlines()[:10]]
    t, items = _items(suite, "pope", rows)
    metrics, _ = run_generate_task(t, suite, items, Fixed(['Yes"'] * 10))
    gold_yes = sum(r["label"] == "yes" for r in rows) / 10
    assert metrics["yes_ratio"] == 1.0 and gold_yes < 1.0 and metrics["recall"] == 1.0
    assert metrics["precision"] == pytest.approx(gold_yes)


# --------------------------------------------------------------------------- RACE as race_em reads it


def test_race_last_question_of_each_article_from_either_schema():
    suite = load_suite("unseen_language")
    by_article: dict[str, list] = {}
    for r in RACE_ROWS:
        by_article.setdefault(r["article"], []).append({k: r[k] for k in ("question", "options", "answer")})
    eleuther = [{"article": a, "problems": repr(ps)} for a, ps in by_article.items()]  # the hub's literal string
    _, from_eleuther = _items(suite, "race_high", eleuther)
    _, from_ehovy = _items(suite, "race_high", RACE_ROWS)
    assert (
        [i.question for i in from_eleuther]
        == [i.question for i in from_ehovy]
        == [
            "What was the weather like when Tom walked home?",
            "How many books can a student borrow at a time?",
            "What did Mary plant?",
        ]
    )
    assert [i.id for i in from_ehovy] == ["high1.txt#1", "high2.txt#0", "high3.txt#0"]
    every = suite.task("race_high").model_copy(update={"format": "race_high_all"})
    assert len(to_items(every, TaskData(rows=eleuther, source="t"))) == len(RACE_ROWS)


def test_text_prompts_without_bos_as_lm_eval(tiny_llava_dir):
    """MLAN's language runs encode without BOS (LM:lm_eval/models/huggingface.py:L727-735, L756-765):
    a request with `bos=False` (unseen_language's `add_bos: false`) reaches the model without it."""
    import torch
    from transformers import AutoTokenizer

    from mlan.evaluate.generate import HFGenerator

    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    assert tok("User: hi").input_ids[0] == tok.bos_token_id
    seen = []

    class Model:
        dtype = torch.float32

        def generate(self, input_ids, **kw):
            seen.append(input_ids[0].tolist())
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), tok.eos_token_id)], dim=1)

    loaded = type(
        "L", (), {"multimodal": False, "tokenizer": tok, "processor": None, "model": Model(), "device": "cpu"}
    )
    HFGenerator(loaded).generate(
        [Request("User: hi", None, False), Request("User: hi", None, True)], max_new_tokens=1, stop=[]
    )
    bare = tok("User: hi", add_special_tokens=False).input_ids
    assert sorted(seen, key=len) == [bare, [tok.bos_token_id, *bare]]


# --------------------------------------------------------------------------- averages, reports, config


def _result(suite: str, task: str, value: float, **kw):
    from mlan.evaluate.report import TaskResult

    return TaskResult(
        task=task, suite=suite, metric="acc", value=value, stderr=None, n=2, modality="vision", seen=False, **kw
    )


def test_named_averages_in_results_and_comparison(tmp_path):
    from mlan.evaluate.report import ModelResults, compare, named_averages, results_table, write_model_results

    vision = load_suite("unseen_vision")
    scores = {"realworldqa": 0.4, "ai2d": 0.5, "pope": 0.8, "gqa": 0.3, "scienceqa": 0.6}
    results = [_result("unseen_vision", t, v, extraction="mlan") for t, v in scores.items()]
    avgs = {a.name: a for a in named_averages(results, [vision])}
    assert avgs["vision_avg_v3"].value == pytest.approx((0.3 + 0.4 + 0.5 + 0.8) / 4)
    assert avgs["vision_avg_v1"].value == pytest.approx(sum(scores.values()) / 5)
    partial = {a.name: a for a in named_averages(results[:3], [vision])}  # --tasks: no partial averages
    assert partial["vision_avg_v3"].value is None and partial["vision_avg_v3"].missing == ["gqa"]
    mr = ModelResults("m", "m", results, averages=list(avgs.values()))
    table = results_table(mr)
    assert "| unseen_vision | **vision_avg_v3** (gqa, realworldqa, ai2d, pope) | | 50.0 |" in table
    assert "| unseen_vision | **vision_avg_v1** (gqa, realworldqa, ai2d, pope, scienceqa) | | 52.0 |" in table
    assert "**average**" not in table  # the named averages replace the plain one
    data = json.loads(write_model_results(mr, tmp_path).read_text())
    assert [(a["name"], a["value"]) for a in data["averages"]] == [(n, a.value) for n, a in avgs.items()]
    assert {r["extraction"] for r in data["results"]} == {"mlan"}
    other = ModelResults("o", "o", [_result("unseen_vision", t, 0.5) for t in scores], averages=[])
    rows = compare([mr, other], "m")
    named = [r for r in rows if r.kind == "average"]
    assert [r.name for r in named] == ["vision_avg_v3", "vision_avg_v1"] and named[0].values["o"] is None


def test_also_report_rows():
    from mlan.evaluate.report import ModelResults, compare, results_table

    gsm = _result("eight_task", "gsm8k", 0.4, extra={"exact_match,strict-match": 0.3})
    table = results_table(ModelResults("m", "m", [gsm]))
    assert "| eight_task | gsm8k | exact_match,strict-match | 30.0 |" in table
    rows = compare([ModelResults("m", "m", [gsm]), ModelResults("o", "o", [gsm])], "m")
    assert [(r.kind, r.metric) for r in rows][:2] == [("task", "acc"), ("metric", "exact_match,strict-match")]
    assert next(r for r in rows if r.kind == "suite").values["m"] == 0.4  # extra metrics stay out of averages
    assert load_suite("eight_task").task("gsm8k").also_report == ["exact_match,strict-match"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"averages": [{"name": "avg", "tasks": ["boolq", "nope"]}]}, "averages.0.tasks: no task 'nope'"),
        ({"averages": [{"name": "boolq", "tasks": ["boolq"]}]}, "already the name of a task"),
        (
            {"tasks": [{"name": "arc_easy", "hub": {"path": "a/b", "split": "test"}, "metric": "acc"}]},
            "no MLAN prompt text",
        ),
    ],
)
def test_suite_checks(change, message):
    from pydantic import ValidationError

    from mlan.config.suite import EvalSuite

    base = load_suite("unseen_language").model_dump()
    with pytest.raises(ValidationError, match=re.escape(message)):
        EvalSuite.model_validate({**base, **change})


def test_mlan_filters_map_words_and_letters_exactly():
    """The mappings of mlan.evaluate.extract_mlan one by one, each with the prediction it must give (found by
    mutation testing, docs/mutation.md): yes/no words under both modalities, true/false and number words on
    short vision answers, single characters that are not letters, and the widest choice listed first."""
    from mlan.evaluate.extract_mlan import language_choice, mlan_answer, vision_choice
    from mlan.schemas import Item

    yesno = Item("yesno", "q", "yes", "1")
    # Yes/no predictions are lowercased, and true/false read as yes/no, under either modality.
    assert mlan_answer(yesno, " Yes", "language") == ("yes", True)
    assert mlan_answer(yesno, "Maybe", "language") == ("maybe", False)
    assert mlan_answer(yesno, "True.", "vision") == ("yes", True)
    assert mlan_answer(yesno, "YES, it is", "vision") == ("yes", True)
    # Short vision answers: true/false as yes/no, then a number word as its digit (the prediction itself).
    assert mlan_answer(Item("short", "q", "no", "2"), "False, it is not", "vision") == ("no", True)
    assert mlan_answer(Item("short", "q", "2", "3"), "Two", "vision") == ("2", True)
    assert mlan_answer(Item("short", "q", "2", "3"), "Three", "vision") == ("3", False)
    # A single character that is no choice's letter stays as it is, under both filters.
    assert language_choice("x", ["cat", "dog"]) == "x"
    assert vision_choice("x", ["cat", "dog"]) == "x"
    assert vision_choice("c", ["cat", "dog", "fish"]) == "C"
    # Punctuation inside the continuation is dropped before the words are compared.
    assert language_choice("water!", ["fire", "water"]) == "B"
    assert language_choice("fire-water", ["fire", "firewater"]) == "B"
    # The widest full match wins wherever it is listed (here first, so not the highest index).
    assert language_choice("sea water", ["sea water", "water", "sand"]) == "A"
