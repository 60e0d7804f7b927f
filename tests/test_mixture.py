"""`mlan build-mixture` end to end through the CLI on the real data slices: counts, ratios,
templates, images, hygiene, contamination, determinism and every bad-input case."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from evaldata import SCIENCEQA_ROWS

from mlan.data.templates import DIRECT_ANSWER, MULTIPLE_CHOICE, SHORT_ANSWER, YES_NO

LETTER = re.compile(r"^[A-Z]$")


def write_spec(path: Path, **spec) -> Path:
    spec.setdefault("name", "test")
    spec.setdefault("validation", 0)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def build_ok(cli, spec: Path, out: Path, *extra: str) -> dict:
    result = cli("-q", "build-mixture", spec, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return manifest(out)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    from typer.testing import CliRunner

    from mlan.cli import app

    out = tmp_path_factory.mktemp("mix") / "quickstart"
    result = CliRunner().invoke(app, ["-q", "build-mixture", "quickstart", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_quickstart_counts_ratios_and_rows(quickstart):
    import datasets

    m = manifest(quickstart)
    dd = datasets.load_from_disk(str(quickstart))
    assert set(dd) == {"train", "validation"}
    assert (len(dd["train"]), len(dd["validation"])) == (320, 32) == (m["splits"]["train"], m["splits"]["validation"])
    assert dd["train"].column_names == ["messages", "images", "modality", "source", "id"]
    assert m["modalities"]["language"]["examples"] == 280 and m["modalities"]["vision"]["examples"] == 40
    assert m["ratios"]["examples_language_share"] == 0.875
    # Each image costs 576 tokens, so vision's share of tokens is far above its share of examples.
    assert m["modalities"]["vision"]["image_tokens"] == 40 * 576
    assert m["ratios"]["tokens_language_share"] < 0.75
    assert m["tokens"]["tokenizer"].startswith("mlan.tiny")
    # Per-source counts add up; language sources at MLAN's shares (weights 4 : 3 : 3 : 3 : 2 + 1 of 280 rows).
    train = dd["train"]
    assert sum(s["train"] for s in m["sources"].values()) == 320
    language = {n: s["train"] for n, s in m["sources"].items() if s["modality"] == "language"}
    assert language == {
        "squad": 70, "strategyqa": 53, "commonsense_qa": 53, "cosmos_qa": 52, "arc_easy": 35, "arc_challenge": 17
    }  # fmt: skip
    assert not any(s["drawn_with_replacement"] or s["repeats"] for s in m["sources"].values())
    assert sorted(set(train["id"])) == sorted(train["id"])
    assert m["covers_eval_tasks"] == ["arc_challenge", "arc_easy", "commonsense_qa"]
    assert len(m["config_hash"]) == len(m["content_hash"]) == 64


def test_quickstart_templates_and_images(quickstart):
    import datasets

    m = manifest(quickstart)
    train = datasets.load_from_disk(str(quickstart))["train"]
    instructions = {*MULTIPLE_CHOICE, *YES_NO, *SHORT_ANSWER}
    kinds = {"mc": 0, "yesno": 0, "short": 0, "cot": 0}
    for row in train:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert any(t in user["content"] for t in instructions)
        if row["modality"] == "vision":
            assert len(row["images"]) == 1 and row["images"][0].size[0] > 0
            assert not user["content"].startswith("Context:")
        else:
            assert row["images"] == []
        target = assistant["content"]
        if "the direct answer is:" in target:
            kinds["cot"] += 1  # MLAN's form: rationale, newline, phrase, answer, full stop; the user turn unchanged
            rationale, _, last = target.rpartition("\n")
            assert rationale and any(re.fullmatch(re.escape(t) + r" [A-Z]\.", last) for t in DIRECT_ANSWER)
            assert any(f" {t}\nA " in user["content"] for t in MULTIPLE_CHOICE)
        elif "\nA " in user["content"]:
            kinds["mc"] += 1  # `<question> <instruction>\nA text\nB text...`, the letter as target
            assert LETTER.match(target) and f"\n{target} " in user["content"]
            assert any(f" {t}\nA " in user["content"] for t in MULTIPLE_CHOICE)
        elif any(t in user["content"] for t in YES_NO):
            kinds["yesno"] += 1  # `[Context: c\n]<instruction>\n<question>`
            assert target in ("yes", "no") and any(f"{t}\n" in user["content"] for t in YES_NO)
        else:
            kinds["short"] += 1
            assert any(f"{t}\n" in user["content"] for t in SHORT_ANSWER)
        if row["source"] == "squad":
            assert user["content"].startswith("Context: ")
    assert all(kinds.values()), kinds
    used = m["templates"]["used"]
    assert sum(v for k, v in used.items() if not k.startswith("cot/")) == 320
    assert len([k for k in used if k.startswith("mc/")]) >= 15
    assert m["templates"]["texts"]["mc/00"] == MULTIPLE_CHOICE[0]


def test_same_seed_same_bytes_other_seed_differs(cli, quickstart, tmp_path):
    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.data.mixture import build_mixture
    from mlan.paths import resolve_config

    a = manifest(quickstart)
    # The library API (what `mlan quickstart` calls) and the CLI give the same bytes.
    result = build_mixture(load_config(resolve_config("quickstart", "data_mixtures"), MixtureSpec), tmp_path / "again")
    assert (result.train_rows, result.validation_rows) == (320, 32)
    again = manifest(tmp_path / "again")
    assert (
        again["content_hash"] == a["content_hash"] == result.content_hash and again["config_hash"] == a["config_hash"]
    )
    for split in ("train", "validation"):
        for f in (quickstart / split).glob("*.arrow"):
            assert f.read_bytes() == (tmp_path / "again" / split / f.name).read_bytes()
    other = build_ok(cli, "quickstart", tmp_path / "other", "-o", "seed=7")
    assert other["content_hash"] != a["content_hash"] and other["config_hash"] != a["config_hash"]


def test_modality_split_is_proportional_to_source_sizes(cli, shared_data, tmp_path):
    spec = write_spec(
        tmp_path / "m.yaml",
        modality_split={"language": 100},
        validation=0.1,
        sources=[
            {
                "name": "strategyqa",
                "dataset": str(shared_data / "strategyqa/validation.jsonl"),
                "adapter": "strategyqa",
            },
            {"name": "squad", "dataset": str(shared_data / "squad/validation.jsonl"), "adapter": "squad"},
        ],
    )
    m = build_ok(cli, spec, tmp_path / "out")
    # 153 and 200 rows: 100 * 153/353 = 43.3 and 56.7.
    assert (m["sources"]["strategyqa"]["train"], m["sources"]["squad"]["train"]) == (43, 57)
    assert m["splits"] == {"train": 100, "validation": 10}
    assert m["ratios"]["examples_language_share"] == 1.0 and m["ratios"]["examples_language_to_vision"] is None
    weighted = write_spec(
        tmp_path / "w.yaml",
        modality_split={"language": 100},
        sources=[
            {"name": "a", "dataset": str(shared_data / "arc_easy/train.jsonl"), "adapter": "arc", "weight": 3},
            {"name": "b", "dataset": str(shared_data / "arc_challenge/train.jsonl"), "adapter": "arc", "weight": 1},
        ],
    )
    m = build_ok(cli, weighted, tmp_path / "w")
    assert (m["sources"]["a"]["train"], m["sources"]["b"]["train"]) == (75, 25)
    assert m["covers_eval_tasks"] == ["arc_challenge", "arc_easy"]


def test_count_and_fraction_and_vision_rows_from_files(cli, shared_data, tmp_path):
    images = shared_data / "images"
    vqa = read_jsonl(Path(__file__).parents[1] / "mlan/assets/data/vqav2/train.jsonl")
    for r in vqa:  # absolute paths: no image_root needed
        r["image"] = str(images / r["image"])
    spec = write_spec(
        tmp_path / "s.yaml",
        size=None,
        validation=4,
        sources=[
            {
                "name": "csqa",
                "dataset": str(shared_data / "commonsense_qa/train.jsonl"),
                "adapter": "commonsense_qa",
                "count": 30,
            },
            {
                "name": "cosmos",
                "dataset": str(shared_data / "cosmos_qa/validation.jsonl"),
                "adapter": "cosmos_qa",
                "fraction": 0.1,
            },
            {"name": "vqa", "dataset": str(write_jsonl(tmp_path / "vqa.jsonl", vqa)), "adapter": "vqav2", "count": 10},
        ],
    )
    m = build_ok(cli, spec, tmp_path / "out")
    assert [m["sources"][n]["train"] for n in ("csqa", "cosmos", "vqa")] == [30, 20, 10]
    assert m["splits"] == {"train": 60, "validation": 4}
    assert m["modalities"]["vision"]["images"] == 10
    assert m["ratios"]["examples_language_to_vision"] == 5.0


def test_generic_chat_and_qa_adapters_and_chain_of_thought(cli, shared_data, tmp_path):
    import datasets

    chat_rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is shown in picture {i}?"},
                {"role": "assistant", "content": name.split("_", 1)[1].split(".")[0]},
            ],
            "images": [name],
        }
        for i, name in enumerate(sorted(p.name for p in (shared_data / "images").iterdir()))
    ]
    sqa = [r for r in SCIENCEQA_ROWS if r["solution"] and r["image"] is None]  # ScienceQA schema, text rows
    spec = write_spec(
        tmp_path / "g.yaml",
        sources=[
            {
                "name": "chat",
                "dataset": str(write_jsonl(tmp_path / "chat.jsonl", chat_rows)),
                "adapter": "chat",
                "columns": {"images": "images"},
                "image_root": str(shared_data / "images"),
                "count": 11,
            },
            {
                "name": "sqa",
                "dataset": str(write_jsonl(tmp_path / "sqa.jsonl", sqa)),
                "adapter": "qa",
                "columns": {"choices": "choices", "context": "hint", "rationale": "solution", "id": "pid"},
                "chain_of_thought": 1.0,
                "count": 20,
            },
            {
                "name": "boolq",
                "dataset": str(shared_data / "boolq/validation.jsonl"),
                "adapter": "qa",
                "columns": {"context": "passage"},
                "count": 10,
            },
        ],
    )
    m = build_ok(cli, spec, tmp_path / "out")
    assert m["sources"]["chat"]["modality"] == "vision" and m["sources"]["sqa"]["modality"] == "language"
    train = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    by_source: dict[str, list] = {}
    for row in train:
        by_source.setdefault(row["source"], []).append(row)
    for row in by_source["chat"]:
        assert row["messages"][0] == {"role": "system", "content": "Be brief."} and len(row["images"]) == 1
    for row in by_source["sqa"]:
        assert (
            row["messages"][1]["content"].endswith(".") and " the direct answer is: " in row["messages"][1]["content"]
        )
        assert row["id"].startswith("sqa:")
    assert all(r["messages"][1]["content"] in ("yes", "no") for r in by_source["boolq"])
    assert any(k.startswith("cot/") for k in m["templates"]["used"])


def test_duplicates_removed_and_replaced(cli, one_line_error, shared_data, tmp_path):
    rows = read_jsonl(shared_data / "arc_easy/train.jsonl")[:40]
    exact = [dict(r, id=r["id"] + "-copy") for r in rows[:5]]
    near = []
    for r in rows[5:10]:  # re-cased, re-punctuated, options shuffled: the same question
        text, labels = r["choices"]["text"], r["choices"]["label"]
        key = labels.index(r["answerKey"])
        order = list(reversed(range(len(text))))
        near.append(
            {
                "id": r["id"] + "-near",
                "question": r["question"].upper().replace("?", " ?!"),
                "choices": {"text": [text[i] for i in order], "label": labels},
                "answerKey": labels[order.index(key)],
            }
        )
    spec = write_spec(
        tmp_path / "d.yaml",
        sources=[
            {
                "name": "arc",
                "dataset": str(write_jsonl(tmp_path / "arc.jsonl", rows + exact + near)),
                "adapter": "arc",
                "count": 40,
            }
        ],
    )
    m = build_ok(cli, spec, tmp_path / "out")
    assert m["hygiene"]["exact_duplicates"] == 5 and m["hygiene"]["near_duplicates"] == 5
    assert m["sources"]["arc"]["train"] == 40 and m["sources"]["arc"]["rows_examined"] == 50
    nodedup = build_ok(cli, spec, tmp_path / "raw", "-o", "dedup=false", "-o", "sources.0.count=50")
    assert nodedup["hygiene"]["exact_duplicates"] == 0 and nodedup["splits"]["train"] == 50
    tooshort = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "x", "-o", "sources.0.count=45"))
    assert "only 40 usable rows of 50" in tooshort and "10 duplicates" in tooshort


def test_contamination_report_and_drop(cli, shared_data, tmp_path):
    import datasets

    evals = read_jsonl(shared_data / "commonsense_qa/validation.jsonl")
    leaked = [dict(r, id=f"leak{i}") for i, r in enumerate(evals[:10])]
    rephrased = [dict(evals[10], id="ngram0", question="Quick one: " + evals[10]["question"] + " Think.")]
    clean = read_jsonl(shared_data / "commonsense_qa/train.jsonl")[:40]
    data = write_jsonl(tmp_path / "csqa.jsonl", leaked + rephrased + clean)
    spec = write_spec(
        tmp_path / "c.yaml",
        sources=[{"name": "csqa", "dataset": str(data), "adapter": "commonsense_qa", "count": 51}],
        contamination={
            "evals": [
                {"task": "commonsense_qa", "dataset": str(shared_data / "commonsense_qa/validation.jsonl")},
                {
                    "task": "openbookqa",
                    "dataset": str(shared_data / "openbookqa/test.jsonl"),
                    "question_fields": ["question_stem"],
                },
            ]
        },
    )
    m = build_ok(cli, spec, tmp_path / "report")
    rep = m["contamination"]["tasks"]
    assert rep["commonsense_qa"]["eval_rows"] == 200 and rep["openbookqa"]["eval_rows"] == 200
    assert (rep["commonsense_qa"]["exact"], rep["commonsense_qa"]["ngram"], rep["commonsense_qa"]["dropped"]) == (
        10,
        1,
        0,
    )
    assert rep["commonsense_qa"]["by_source"] == {"csqa": 11} and len(rep["commonsense_qa"]["examples"]) == 5
    assert rep["openbookqa"]["exact"] + rep["openbookqa"]["ngram"] == 0
    assert m["covers_eval_tasks"] == ["commonsense_qa"]

    m = build_ok(cli, spec, tmp_path / "drop", "-o", "contamination.drop=true", "-o", "sources.0.count=40")
    rep = m["contamination"]["tasks"]["commonsense_qa"]
    # Dropped rows are replaced from the same source; the walk stops once 40 clean rows are in.
    assert (
        1
        <= rep["dropped"]
        == m["sources"]["csqa"]["contaminated_dropped"]
        == m["sources"]["csqa"]["rows_examined"] - 40
    )
    eval_questions = {r["question"] for r in evals}
    for row in datasets.load_from_disk(str(tmp_path / "drop"))["train"]:
        assert not any(q in row["messages"][0]["content"] for q in eval_questions)


def test_token_counts_with_model_tokenizer_and_processor(cli, quickstart, tiny_llava_dir, tmp_path):
    m = build_ok(
        cli, "quickstart", tmp_path / "out", "-o", f"tokenizer={tiny_llava_dir}", "-o", f"image_tokens={tiny_llava_dir}"
    )
    # The tiny LLaVA sees 32 px images in 8 px patches: 16 image tokens per image.
    assert m["tokens"]["image_tokens_per_image"] == 16 and m["tokens"]["image_tokens_from"].startswith("processor")
    assert m["tokens"]["tokenizer"] == str(tiny_llava_dir)
    assert m["modalities"]["vision"]["image_tokens"] == 40 * 16
    # Same rows, same tokenizer vocabulary as the built-in default: the same text token counts.
    assert m["content_hash"] == manifest(quickstart)["content_hash"]
    assert m["modalities"]["language"]["text_tokens"] == manifest(quickstart)["modalities"]["language"]["text_tokens"]


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def bad_row_file(tmp_path: Path, shared_data: Path) -> Path:
    rows = read_jsonl(shared_data / "arc_easy/train.jsonl")[:20]
    del rows[2]["question"]
    return write_jsonl(tmp_path / "bad.jsonl", rows)


def bad_image_file(tmp_path: Path, shared_data: Path) -> Path:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows = read_jsonl(Path(__file__).parents[1] / "mlan/assets/data/vqav2/train.jsonl")[:20]
    for r in rows:
        r["image"] = str(shared_data / "images" / r["image"])
    rows[4]["image"] = str(tmp_path / "broken.jpg")
    return write_jsonl(tmp_path / "vqa.jsonl", rows)


def broken_line_file(tmp_path: Path, shared_data: Path, name: str = "broken.jsonl") -> Path:
    """SQuAD rows, the seventh (line 7) missing the closing quote of its id, as a hand edit leaves it."""
    lines = (shared_data / "squad/validation.jsonl").read_text().splitlines()[:20]
    assert lines[6].startswith('{"id": "'), lines[6][:20]
    end = lines[6].index('", ')
    lines[6] = lines[6][:end] + lines[6][end + 1 :]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path / name


def broken_document_file(tmp_path: Path, shared_data: Path) -> Path:
    """SQuAD rows as one pretty-printed JSON list whose fourth line lacks its comma (the parser finds
    that out at the next value, on line 5, and says so)."""
    rows = read_jsonl(shared_data / "squad/validation.jsonl")[:3]
    lines = json.dumps(rows, indent=1).splitlines()
    assert lines[3].endswith(","), lines[3]
    lines[3] = lines[3][:-1]
    (tmp_path / "broken.json").write_text("\n".join(lines))
    return tmp_path / "broken.json"


def folder_without_train(tmp_path: Path, shared_data: Path) -> Path:
    """A save_to_disk folder holding only a `test` split (a source reads `train` unless told)."""
    from datasets import Dataset, DatasetDict

    rows = read_jsonl(shared_data / "squad/validation.jsonl")[:5]
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "disk"))
    return tmp_path / "disk"


def csv_file(tmp_path: Path) -> Path:
    (tmp_path / "rows.csv").write_text("id,question\n1,q\n")
    return tmp_path / "rows.csv"


BAD_CASES = {
    # A local file that does not parse: the file, the first bad line and the parser's reason, and no
    # log record of the datasets library above it (its JSON loader logs an ERROR of its own).
    "broken JSON line": (
        lambda t, d: {"dataset": str(broken_line_file(t, d)), "adapter": "squad", "count": 5},
        "broken.jsonl: line 7: invalid JSON (Expecting ',' delimiter, column ",
    ),
    "broken JSON line in a .json file": (
        lambda t, d: {"dataset": str(broken_line_file(t, d, "lines.json")), "adapter": "squad", "count": 5},
        "lines.json: line 7: invalid JSON (Expecting ',' delimiter, column ",
    ),
    "broken JSON document": (
        lambda t, d: {"dataset": str(broken_document_file(t, d)), "adapter": "squad", "count": 2},
        "broken.json: line 5: invalid JSON (Expecting ',' delimiter, column 3)",
    ),
    "not a data file": (
        lambda t, d: {"dataset": str(csv_file(t)), "adapter": "squad", "count": 2},
        "rows.csv: expected a .jsonl, .json or .parquet file or a save_to_disk folder",
    ),
    "folder without the split": (
        lambda t, d: {"dataset": str(folder_without_train(t, d)), "adapter": "squad", "count": 2},
        "disk has no split 'train' (splits: test)",
    ),
    "missing file": (lambda t, d: {"dataset": str(t / "nope.jsonl"), "adapter": "arc", "count": 5}, "file not found"),
    "unknown adapter": (
        lambda t, d: {"dataset": str(d / "squad/validation.jsonl"), "adapter": "sqaud", "count": 5},
        "sources.0.adapter: unknown adapter (did you mean 'squad'?) (got 'sqaud')",
    ),
    "missing column": (
        lambda t, d: {"dataset": str(d / "arc_easy/train.jsonl"), "adapter": "squad", "count": 5},
        "missing column 'context' required by adapter 'squad' (columns: answerKey, choices, id, question)",
    ),
    "row missing field": (
        lambda t, d: {"dataset": str(bad_row_file(t, d)), "adapter": "arc", "count": 20},
        "row 2 (line 3): missing field 'question' (set bad_rows: skip",
    ),
    "unreadable image": (
        lambda t, d: {"dataset": str(bad_image_file(t, d)), "adapter": "vqav2", "count": 20},
        "row 4 (line 5), id '5004': unreadable image",
    ),
    "missing image": (
        lambda t, d: {
            "dataset": str(d / "pope_coco/random.jsonl"),
            "adapter": "qa",
            "columns": {"question": "text", "answer": "label", "image": "image"},
            "count": 3,
        },
        "cannot read image",
    ),
    "count larger than source": (
        lambda t, d: {"dataset": str(d / "squad/validation.jsonl"), "adapter": "squad", "count": 500},
        "asks for 500 rows (500 train + 0 validation) but holds only 200",
    ),
    "count and fraction": (
        lambda t, d: {"dataset": str(d / "squad/validation.jsonl"), "adapter": "squad", "count": 5, "fraction": 0.5},
        "sources.0: give exactly one of count or fraction",
    ),
    "hub offline": (
        lambda t, d: {"dataset": "rajpurkar/squad", "adapter": "squad", "count": 5},
        "(rajpurkar/squad): the Hugging Face Hub is unreachable",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_one_line_exit_2_nothing_written(cli, one_line_error, shared_data, tmp_path, case):
    make, message = BAD_CASES[case]
    spec = write_spec(tmp_path / "bad.yaml", sources=[{"name": "src", **make(tmp_path, shared_data)}])
    out = tmp_path / "out"
    assert message in one_line_error(cli("build-mixture", spec, "--out", out))
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_broken_json_line_in_a_real_console(shared_data, tmp_path):
    """The same broken line as a user's terminal shows it: `mlan` in its own process, so whatever the
    libraries print by any route (their own handlers, stderr) is seen, not only what CliRunner catches.
    One line naming the file, the line and the reason; the library's own record only with -v."""
    import os
    import subprocess
    import sys

    broken = broken_line_file(tmp_path, shared_data)
    spec = write_spec(
        tmp_path / "bad.yaml", sources=[{"name": "src", "dataset": str(broken), "adapter": "squad", "count": 5}]
    )

    def run(*flags: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "mlan", *flags, "build-mixture", str(spec), "--out", str(tmp_path / "out")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)

    quiet = run()
    assert quiet.returncode == 2, quiet.stderr
    lines = [x for x in quiet.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, quiet.stderr
    assert re.fullmatch(
        rf"error: source 'src' \(.*\): cannot read {re.escape(str(broken))}: line 7: invalid JSON "
        r"\(Expecting ',' delimiter, column \d+\)",
        lines[0],
    ), lines[0]
    assert not quiet.stdout.strip(), quiet.stdout
    verbose = run("-v")
    assert verbose.returncode == 2 and "Failed to load JSON from file" in verbose.stderr, verbose.stderr


@pytest.mark.parametrize("case", ["row missing field", "unreadable image"])
def test_bad_rows_skip_policy_counts_them(cli, shared_data, tmp_path, case):
    make, _ = BAD_CASES[case]
    src = {"name": "src", **make(tmp_path, shared_data), "bad_rows": "skip", "count": 19}
    m = build_ok(cli, write_spec(tmp_path / "s.yaml", sources=[src]), tmp_path / "out")
    assert m["sources"]["src"]["bad_rows"] == 1 and m["hygiene"]["bad_rows"] == 1
    assert m["sources"]["src"]["bad_row_examples"][0].startswith(("row 2 (line 3)", "row 4 (line 5)"))
    assert m["splits"]["train"] == 19


def test_size_the_fractions_cannot_meet_is_one_line(cli, one_line_error, shared_data, tmp_path):
    """--size with sources given as fractions of their files: the size must be what the fractions give."""
    src = {"name": "src", "dataset": str(shared_data / "squad/validation.jsonl"), "adapter": "squad", "fraction": 0.5}
    spec = write_spec(tmp_path / "s.yaml", sources=[src])
    msg = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "out", "--size", "41"))
    assert "size: 41 differs from the 100 training rows" in msg, msg
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(cli, one_line_error, quickstart):
    result = cli("build-mixture", "quickstart", "--out", quickstart)
    assert "already exists (pass --overwrite" in one_line_error(result)


def test_apportion_by_largest_remainder():
    """apportion: floors of the exact shares, then one more row each for the largest remainders, ties to the
    first listed (values worked out by hand)."""
    from mlan.data.mixture import apportion

    assert apportion(9, [1, 2, 3, 4]) == [1, 2, 3, 3]  # exact 0.9 1.8 2.7 3.6: three rows to the remainders .9 .8 .7
    assert apportion(7, [5, 3, 2]) == [4, 2, 1]  # exact 3.5 2.1 1.4
    assert apportion(2, [1, 1, 1]) == [1, 1, 0]  # equal remainders: the first ones
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(1, [1, 3]) == [0, 1]
    assert apportion(6, [0.25, 0.5]) == [2, 4]  # weights summing to less than 1
    assert apportion(12, [6, 0, 6]) == [6, 0, 6]
    assert apportion(0, [1, 2]) == [0, 0]
    assert apportion(5, [0, 0]) == [0, 0]  # nothing to weigh by: nothing drawn, no division by zero


def test_plan_counts_by_hand():
    """Training rows from counts, fractions (rounded) or the modality split (apportioned by weight, else size);
    validation rows a count or a share of the training rows, apportioned over the sources by their training rows."""
    from mlan.config.mixture import MixtureSpec
    from mlan.data.mixture import plan_counts
    from mlan.errors import MlanError

    def spec(validation, *sources, **more):
        return MixtureSpec(name="m", validation=validation, sources=list(sources), **more)

    def src(name, adapter="squad", **kw):
        return {"name": name, "dataset": f"d/{name}", "adapter": adapter, **kw}

    a, b = src("a", count=30), src("b", fraction=0.25)
    assert plan_counts(spec(0.1, a, b), [100, 40]) == ([30, 10], [3, 1])  # 10% of 40 = 4 validation rows
    assert plan_counts(spec(5, a, b), [100, 40]) == ([30, 10], [4, 1])  # 5 rows: exact 3.75 and 1.25
    assert plan_counts(spec(1, a, b), [100, 40]) == ([30, 10], [1, 0])  # 1 is a count, not 100%
    assert plan_counts(spec(0, a, b, size=40), [100, 40]) == ([30, 10], [0, 0])
    assert plan_counts(spec(0, a, src("e", count=0)), [100, 0]) == ([30, 0], [0, 0])  # nothing from an empty one
    assert plan_counts(spec(0.5, src("c", fraction=0.3)), [50]) == ([15], [8])  # round(0.3 * 50), round(7.5)
    with pytest.raises(MlanError, match="size: 41 differs from the 40 training rows"):
        plan_counts(spec(0, a, b, size=41), [100, 40])
    # Modality split: language 8 rows over weights 10 (l1's size) and 3 -> exact 6.15 and 1.85 -> 6 and 2.
    split = spec(
        0.2,
        src("l1"),
        src("l2", weight=3),
        src("v", "vqav2"),
        modality_split={"language": 8, "vision": 5},
    )
    # round(0.2 * 13) = 3 validation rows over 6, 2, 5: exact 1.38 0.46 1.15 -> 1, 0, 1 and the remainder to l2.
    assert plan_counts(split, [10, 20, 50]) == ([6, 2, 5], [1, 1, 1])
    # Enough rows: exactly all of them without replacement; with replacement, one row left to draw from.
    assert plan_counts(spec(5, src("c", count=15)), [20]) == ([15], [5])
    assert plan_counts(spec(5, src("c", count=30, replace=True)), [6]) == ([30], [5])
    # The messages name the remedy.
    remedy = "lower its count/fraction or the validation size, or draw with replacement (replace: true)"
    with pytest.raises(
        MlanError, match=rf"asks for 21 rows \(15 train \+ 6 validation\) but holds only 20; {re.escape(remedy)}"
    ):
        plan_counts(spec(6, src("c", count=15)), [20])
    with pytest.raises(
        MlanError,
        match=r"its 5 validation rows take all 5 rows, leaving none to draw its 30 training rows from; lower the validation size$",
    ):
        plan_counts(spec(5, src("c", count=30, replace=True)), [5])
