"""mlan.schemas: each dataset schema reads a real bundled row (mlan/assets/data) into the
expected item; schemas with no redistributable slice read the rows tests/evaldata.py writes in
their layout. Then the bad-row messages and the one local-file reader."""

from __future__ import annotations

import json

import pytest
from evaldata import AI2D_ROWS, GQA_ROWS, HELLASWAG_ROWS, RACE_ROWS, REALWORLDQA_ROWS, SCIENCEQA_ROWS

from mlan.config.mixture import Columns
from mlan.errors import MlanError
from mlan.paths import BUNDLED_DATA_DIR
from mlan.schemas import BY_COLUMNS, SCHEMAS, BadRow, Item, open_local, read_rows


def first_row(rel: str) -> dict:
    with (BUNDLED_DATA_DIR / rel).open(encoding="utf-8") as f:
        return json.loads(f.readline())


def test_arc_commonsense_and_openbookqa_rows():
    item = SCHEMAS["arc"](first_row("arc_easy/test.jsonl"))
    assert (item.kind, item.id, item.answer, item.answer_index) == ("mc", "Mercury_417466", "A", 0)
    assert item.question == "Which statement best explains why photosynthesis is the foundation of most food webs?"
    assert item.choices[0] == "Sunlight is the source of energy for nearly all ecosystems." and len(item.choices) == 4
    # CommonsenseQA lists labels before texts; the answer key still picks its text.
    item = SCHEMAS["commonsense_qa"](first_row("commonsense_qa/validation.jsonl"))
    assert (item.id, item.answer, item.choices) == (
        "1afa02df02c908a558b4036e80242fac",
        "A",
        ["bank", "library", "department store", "mall", "new york"],
    )
    item = SCHEMAS["openbookqa"](first_row("openbookqa/test.jsonl"))
    assert (item.id, item.answer, item.choices[1]) == ("8-343", "B", "quit eating lunch out")
    assert item.question.startswith("A person wants to start saving money")
    # ARC's numeric labels are re-lettered; a row without an id gets None (the caller numbers it).
    row = first_row("arc_challenge/train.jsonl") | {"answerKey": "3", "id": None}
    row["choices"] = {"text": row["choices"]["text"], "label": ["1", "2", "3", "4"]}
    item = SCHEMAS["arc"](row)
    assert (item.answer, item.id) == ("C", None)


def test_language_rows():
    squad = SCHEMAS["squad"](first_row("squad/validation.jsonl"))
    assert (squad.kind, squad.id, squad.answer) == ("short", "56be4db0acb8001400a502ec", "Denver Broncos")
    assert squad.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert squad.context.startswith("Super Bowl 50 was an American football game")
    sqa = SCHEMAS["strategyqa"](first_row("strategyqa/train.jsonl"))
    assert (sqa.kind, sqa.id, sqa.answer) == ("yesno", "2bc9c4f9c19c167187f2", "yes")
    assert sqa.context.startswith("Julius Caesar had three children. Genghis Khan had sixteen children.")
    cosmos = SCHEMAS["cosmos_qa"](first_row("cosmos_qa/validation.jsonl"))
    assert (cosmos.kind, cosmos.answer, cosmos.question) == ("mc", "B", "Why is this person asking about divorce ?")
    assert cosmos.choices[1] == "He wants to get married to a different person ." and cosmos.context.startswith("Do i")
    boolq = SCHEMAS["boolq"](first_row("boolq/validation.jsonl"))
    assert (boolq.kind, boolq.answer, boolq.id) == ("yesno", "no", None)
    assert boolq.question == "Does ethanol take more energy make that produces?"  # capitalised, question mark added
    mmlu = SCHEMAS["mmlu"](first_row("mmlu/test.jsonl"))
    assert (mmlu.kind, mmlu.answer, mmlu.choices) == ("mc", "B", ["0", "4", "2", "6"])
    race = SCHEMAS["race"](RACE_ROWS[0])
    assert (race.id, race.answer, race.choices[1], race.context[:8]) == ("high1.txt", "B", "Monday", "Tom went")
    swag = SCHEMAS["hellaswag"](HELLASWAG_ROWS[0])
    assert (swag.id, swag.answer, swag.context) == ("24", "D", "Roof shingle removal: A man is sitting on a roof. he")


def test_vision_rows():
    vqa = SCHEMAS["vqav2"](first_row("vqav2/train.jsonl"))
    assert (vqa.kind, vqa.answer, vqa.id, vqa.images) == ("short", "ironing", "5000", ["llava_extreme_ironing.jpg"])
    aok = SCHEMAS["aokvqa"](first_row("aokvqa/train.jsonl"))
    assert (aok.kind, aok.answer, aok.id, aok.image) == ("mc", "A", "mlan0000", "llava_extreme_ironing.jpg")
    assert aok.rationale.startswith("People usually iron indoors")
    pope = SCHEMAS["pope"](first_row("pope_coco/random.jsonl"))
    assert (pope.kind, pope.question, pope.answer, pope.id) == (
        "yesno",
        "Is there a snowboard in the image?",
        "yes",
        "1",
    )
    assert pope.image == "COCO_val2014_000000310196.jpg"
    rwqa = SCHEMAS["realworldqa"](REALWORLDQA_ROWS[0])
    assert (rwqa.kind, rwqa.question, rwqa.choices, rwqa.answer) == (
        "mc",
        "What is in the sky?",
        ["A rocket", "A bird", "A kite"],
        "A",
    )
    assert SCHEMAS["realworldqa"](REALWORLDQA_ROWS[2]).kind == "short"  # no options: a short answer
    assert SCHEMAS["ai2d"](AI2D_ROWS[0]).answer == "A"
    gqa = SCHEMAS["gqa"](GQA_ROWS[0])
    assert (gqa.kind, gqa.id, gqa.answer, gqa.image) == ("short", "201307251", "man", None)  # images joined later
    sci = SCHEMAS["scienceqa"](SCIENCEQA_ROWS[0])
    assert (sci.answer, sci.id, sci.context, sci.images) == ("B", "9001", None, ["image.png"])
    assert SCHEMAS["scienceqa"](SCIENCEQA_ROWS[-1]).image is None


def test_generic_rows_and_bad_rows():
    item = SCHEMAS["qa_rows"]({"question": "pick", "answer": "dog", "choices": ["cat", "dog"]})
    assert (item.kind, item.answer, item.id) == ("mc", "B", None)
    assert SCHEMAS["qa_rows"]({"id": 7, "question": "1 + 2 =", "answer": "3"}).kind == "exact"
    cols = Columns(choices="choices", answer="correct_choice_idx", id="question_id")
    assert BY_COLUMNS["qa"](first_row("aokvqa/train.jsonl"), cols).answer == "A"
    chat = BY_COLUMNS["chat"](
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, Columns()
    )
    assert (chat.kind, chat.question, chat.answer) == ("chat", "hi", "yo")
    row = first_row("arc_easy/test.jsonl")
    with pytest.raises(BadRow, match="answer key 'E' is not among the choice labels"):
        SCHEMAS["arc"](row | {"answerKey": "E"})
    with pytest.raises(BadRow, match="missing field 'question'"):
        SCHEMAS["arc"]({k: v for k, v in row.items() if k != "question"})
    with pytest.raises(BadRow, match="field 'label' must be 0-3"):
        SCHEMAS["cosmos_qa"](first_row("cosmos_qa/validation.jsonl") | {"label": 7})


def test_item_image_and_target():
    item = Item("mc", "q", "C", "1", choices=["a", "b", "c"])
    assert (item.target(), item.answer_index, item.image) == ("C", 2, None)
    item.image = "x.png"
    assert item.images == ["x.png"]


def test_local_reader_formats(tmp_path):
    import datasets

    rows = [{"id": "a", "question": "q1", "answer": "x"}, {"id": "b", "question": "q2", "answer": "y"}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": "1", "data": rows}))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "r.parquet"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "disk"))
    for name in ("r.jsonl", "list.json", "wrapped.json", "r.parquet", "disk"):
        assert read_rows(tmp_path / name, split="test") == rows, name
        assert open_local(tmp_path / name, split="test", what="src").to_list() == rows, name
    # Rows as written: a key absent from one row stays absent (the Arrow loader would fill None).
    (tmp_path / "ragged.jsonl").write_text('{"a": 1, "b": 2}\n{"a": 3}\n')
    assert read_rows(tmp_path / "ragged.jsonl") == [{"a": 1, "b": 2}, {"a": 3}]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(MlanError, match=r"bad.jsonl: line 2: invalid JSON"):
        read_rows(tmp_path / "bad.jsonl")
    with pytest.raises(
        MlanError, match=r"^src: cannot read .*bad.jsonl: line 2: invalid JSON \(Expecting property name"
    ):
        open_local(tmp_path / "bad.jsonl", split=None, what="src")
    with pytest.raises(MlanError, match=r"^src: file not found: "):
        open_local(tmp_path / "none.jsonl", split=None, what="src")
    with pytest.raises(MlanError, match=r"disk has no split 'train' \(splits: test\)"):
        open_local(tmp_path / "disk", split="train", what="src")
    (tmp_path / "r.csv").write_text("a,b\n")
    with pytest.raises(MlanError, match=r"expected a .jsonl, .json or .parquet file or a save_to_disk folder"):
        open_local(tmp_path / "r.csv", split=None, what="src")
