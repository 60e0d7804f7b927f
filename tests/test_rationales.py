"""`mlan rationales` and `targets: rationale`: MLAN's teacher step, checked against the authors' code.

The prompts are compared with MLAN's own prompt code (tests/mlan_teacher_prompts.py, copied from
ToviTu/IT_MLLM) run on the same bundled row and exemplar; the joined rows with MLAN's join
(tests/mlan_prompt_template.py); a run killed with SIGKILL and started again with an uninterrupted run.
The exemplars are written here in the authors' key layouts (theirs carry no licence, so none ship).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlan_prompt_template as mlan_join
import mlan_teacher_prompts as oracle
import pytest
import yaml

from mlan.rationales.teacher import BatchTeacher

DATA = Path(__file__).resolve().parents[1] / "mlan" / "assets" / "data"

# (source name, bundled file, adapter, rows drawn, the id field of the adapter)
SOURCES = [
    ("squad", "squad/validation.jsonl", "squad", 4, "id"),
    ("strategyqa", "strategyqa/train.jsonl", "strategyqa", 4, "qid"),
    ("commonsense_qa", "commonsense_qa/train.jsonl", "commonsense_qa", 3, "id"),
    ("cosmos_qa", "cosmos_qa/validation.jsonl", "cosmos_qa", 3, "id"),
    ("arc_easy", "arc_easy/train.jsonl", "arc", 3, "id"),
    ("vqav2", "vqav2/train.jsonl", "vqav2", 2, "question_id"),
    ("aokvqa", "aokvqa/train.jsonl", "aokvqa", 2, "question_id"),
]

# Two exemplars per source, in the key layout of the authors' files (GPT_rationale/*.json): capitalised keys
# at af440a6 for SQuAD, CSQA, CosmosQA, ARC; StrategyQA's own keys with `facts` as one string and a bool.
EXEMPLARS = {
    "squad": [
        {
            "Context": "The tower is 300 m tall.",
            "Question": "How tall is the tower?",
            "Rationale": "The context gives the height: 300 m.",
            "Answer": "300 m",
        },
        {
            "Context": "Ann was born in Oslo.",
            "Question": "Where was Ann born?",
            "Rationale": "The context says Oslo.",
            "Answer": "Oslo",
        },
    ],
    "strategyqa": [
        {
            "qid": "q1",
            "term": "cat",
            "description": "a pet",
            "question": "Can a cat fly?",
            "answer": False,
            "facts": "Cats have no wings.",
            "rationale": "Flying needs wings; cats have none.",
        },
        {
            "qid": "q2",
            "term": "ice",
            "description": "frozen water",
            "question": "Does ice float?",
            "answer": True,
            "facts": "Ice is less dense than water.",
            "rationale": "Less dense things float.",
        },
    ],
    "commonsense_qa": [
        {
            "Context": "A sea\nB desert\n",
            "Question": "Where do fish live?",
            "Rationale": "Fish need water; the sea is water.",
            "Answer": "A sea",
        },
        {
            "Context": "A oven\nB fridge\n",
            "Question": "Where is milk kept cold?",
            "Rationale": "A fridge keeps food cold.",
            "Answer": "B fridge",
        },
    ],
    "cosmos_qa": [
        {
            "Context": "I missed the bus.",
            "Question": "Why was I late? Choose the most suitable answer from below:\nA I slept\nB I missed the bus",
            "Answer": "B",
            "Rationale": "The context says I missed the bus.",
        },
        {
            "Context": "It rained all day.",
            "Question": "What was the weather? Choose the most suitable answer from below:\nA rain\nB sun",
            "Answer": "A",
            "Rationale": "It rained.",
        },
    ],
    "arc": [
        {
            "Question": " Which is a metal? Choose the most appropriate answer from below:\nA iron\nB wood",
            "Answer": "A",
            "Rationale": "Iron is a metal.",
        },
        {
            "Question": " What melts ice? Choose the most appropriate answer from below:\nA cold\nB heat",
            "Answer": "B",
            "Rationale": "Heat melts ice.",
        },
    ],
    "vqav2": [
        {"id": "0", "question": "What colour is the sky?", "answer": "blue", "rationale": "A clear sky looks blue."},
        {"id": "1", "question": "How many dogs are there?", "answer": "2", "rationale": "Two dogs are visible."},
    ],
    "aokvqa": [
        {
            "id": "a",
            "question": "What is he holding? Choose the best answer from the options provided:\nA a cup\nB a pen",
            "answer": "A",
            "rationale": "He holds a cup.",
        },
        {
            "id": "b",
            "question": "What time is it? Choose the best answer from the options provided:\nA night\nB noon",
            "answer": "B",
            "rationale": "The sun is high.",
        },
    ],
}


def write_spec(tmp: Path, name: str = "teach", **rationales) -> Path:
    """A spec over the bundled slices, with exemplar files beside it and a store under `tmp`."""
    ex_dir = tmp / "exemplars"
    ex_dir.mkdir(parents=True, exist_ok=True)
    exemplars = {}
    for source, _, adapter, _, _ in SOURCES:
        f = ex_dir / f"{adapter}.json"
        f.write_text(json.dumps(EXEMPLARS[adapter]))
        exemplars[source] = str(f)
    spec = {
        "name": name,
        "seed": 7,
        "validation": 0,
        "sources": [
            {"name": s, "dataset": f"bundled:{f}", "adapter": a, "count": n}
            | ({"image_root": "bundled:images"} if a in ("vqav2", "aokvqa") else {})
            for s, f, a, n, _ in SOURCES
        ],
        "rationales": {
            "exemplars": exemplars,
            "store": str(tmp / "store"),
            "max_new_tokens": 6,
            "max_new_tokens_by_adapter": {"squad": 8},
            "vision_max_new_tokens": 6,
            "batch_size": 4,
            **rationales,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def teachers(tiny_llava_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(a causal-LM language teacher, a LLaVA vision teacher): the tiny LLaVA's language model and itself."""
    from mlan.models import save_language_model

    lm = save_language_model(tiny_llava_dir, tmp_path_factory.mktemp("teacher") / "lm")
    return lm, tiny_llava_dir


def _records(store: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(store.glob("records-*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            out[r["id"]] = r
    return out


def _source_rows() -> dict[str, dict]:
    """Every bundled row the spec can draw, by its mixture row id `<source>:<id>`."""
    rows = {}
    for source, f, _, _, key in SOURCES:
        for line in (DATA / f).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            rows[f"{source}:{r[key]}"] = r
    return rows


def _student_worded(adapter: str, row: dict, ex: dict) -> tuple[dict, dict]:
    """A row and exemplar with the answers worded as the student sees them, for MLAN's prompt code: StrategyQA
    yes/no (MLAN showed Python's True/False, then trained on "... is: yes."), ARC's numbered options lettered,
    A-OKVQA's options lettered (MLAN listed them without the letters its answer named)."""
    row, ex = json.loads(json.dumps(row)), json.loads(json.dumps(ex))
    if adapter == "strategyqa":
        row["answer"] = "yes" if row["answer"] else "no"
        ex["answer"] = "yes" if ex["answer"] else "no"
    if adapter == "arc":
        labels = row["choices"]["label"]
        row["answerKey"] = "ABCDE"[labels.index(row["answerKey"])]
        row["choices"]["label"] = list("ABCDE"[: len(labels)])
    if adapter == "aokvqa":
        row["choices"] = [f"{letter} {c}" for letter, c in zip("ABCD", row["choices"], strict=True)]
    return row, ex


def _run(cli, spec: Path, teachers, *args: str):
    lm, vlm = teachers
    return cli("rationales", str(spec), "--teacher", str(lm), "--vision-teacher", str(vlm), *args)


def test_prompts_equal_mlans_code_byte_for_byte(cli, teachers, tmp_path):
    """Every row's prompt (answer_wording: mlan) is what the authors' code builds for the same row, exemplar and
    the teacher's EOS; with the default `student` wording only the answer's wording differs, where MLAN's did."""
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(str(teachers[0])).eos_token
    adapters = {s: a for s, _, a, _, _ in SOURCES}
    rows = _source_rows()

    spec = write_spec(tmp_path / "mlan", answer_wording="mlan")
    r = _run(cli, spec, teachers)
    assert r.exit_code == 0, r.output
    records = _records(tmp_path / "mlan" / "store")
    assert {k.split(":")[0] for k in records} == {s for s, *_ in SOURCES}
    assert len(records) == sum(n for *_, n, _ in SOURCES)
    for rid, rec in records.items():
        adapter = adapters[rec["source"]]
        want = oracle.teacher_prompt(adapter, rows[rid], EXEMPLARS[adapter][rec["exemplar"]], eos)
        assert rec["prompt"] == want, rid
    assert {rec["exemplar"] for rec in records.values()} == {0, 1}  # the seeded draw reaches both

    spec = write_spec(tmp_path / "student")
    assert _run(cli, spec, teachers).exit_code == 0
    student = _records(tmp_path / "student" / "store")
    assert student.keys() == records.keys()
    for rid, rec in student.items():
        adapter = adapters[rec["source"]]
        row, ex = _student_worded(adapter, rows[rid], EXEMPLARS[adapter][rec["exemplar"]])
        want = oracle.teacher_prompt(adapter, row, ex, eos)
        assert rec["prompt"] == want, rid
    assert any("\nAnswer: yes\n" in r["prompt"] or "\nAnswer: no\n" in r["prompt"] for r in student.values())
    assert any(r["prompt"] != records[k]["prompt"] for k, r in student.items() if k.startswith("arc_easy:"))

    # The records say what made them; the store says it once more, with the exemplar files' hashes.
    rec = next(iter(records.values()))
    assert rec["teacher"] == str(teachers[0]) and rec["settings"]["temperature"] == 0.15
    meta = json.loads((tmp_path / "mlan" / "store" / "store.json").read_text())
    assert meta["teacher"] == str(teachers[0]) and meta["vision_teacher"] == str(teachers[1])
    assert meta["settings"]["answer_wording"] == "mlan" and set(meta["exemplars"]) == {s for s, *_ in SOURCES}
    squad = next(r for r in records.values() if r["source"] == "squad")
    assert squad["settings"]["max_new_tokens"] == 8 and squad["new_tokens"] <= 8  # SQuAD's own limit (800 in MLAN)


class ScriptedTeacher(BatchTeacher):
    """A teacher whose outputs are known: each status of the cleaning, a rationale naming the answer, and
    the start of a next example that must be cut (a teacher that did not stop)."""

    engine = "scripted"

    def __init__(self, name: str, vision: bool):
        self.name, self.vision, self.eos_token = name, vision, "</s>"

    def prompt_tokens(self, prompts):
        return [len(p.split()) for p in prompts]

    def generate(self, prompts, images, sampling, seed):
        from mlan.rationales.teacher import Generation

        out = []
        for p in prompts:
            n = sum(map(ord, p)) % 5
            text, finished = {
                0: (
                    " Rationale: the row is explained here. You are a helpful agent in answering questions. And",
                    False,
                ),
                1: ("  ", True),
                2: ("I disagree with this answer.", True),
                3: ("An explanation cut off at the", False),
            }.get(n, (f"Reasoning for a prompt of {len(p)} characters.", True))
            out.append(Generation(text, len(text.split()), finished))
        return out


def test_joined_rows_are_mlans_join_and_deterministic(cli, monkeypatch, teachers, tmp_path):
    """`targets: rationale` builds each row as MLAN's join does (rationale, newline, one of the twenty phrases,
    space, answer, full stop) from the kept rationales; rows without one are left out and counted; the
    statuses follow the cleaning rules; the same store and spec give the same mixture twice."""
    from datasets import load_from_disk

    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: ScriptedTeacher(ref, vision))
    spec = write_spec(tmp_path)
    r = _run(cli, spec, teachers)
    assert r.exit_code == 0, r.output
    assert "kept" in r.stdout and "rows generated" in r.stdout
    records = _records(tmp_path / "store")
    by_status = {}
    for rec in records.values():
        by_status.setdefault(rec["status"], []).append(rec)
    assert set(by_status) == {"kept", "empty", "disagree", "too_long"}
    # A teacher that starts the next example has finished: cut there, label stripped, kept.
    cut = [r for r in by_status["kept"] if r["raw"].startswith(" Rationale:")]
    assert cut and all(r["rationale"] == "the row is explained here." for r in cut)
    summary = json.loads((tmp_path / "store" / "summary.json").read_text())
    assert summary["rows"] == len(records) and summary["status"]["kept"] == len(by_status["kept"])
    assert "| squad |" in (tmp_path / "store" / "summary.md").read_text()

    kept = {r["id"]: r for r in by_status["kept"]}
    hashes = []
    for out in ("mix1", "mix2"):
        r = cli("build-mixture", str(spec), "-o", "targets=rationale", "-o", f"rationales.teacher={teachers[0]}",
                "-o", f"rationales.vision_teacher={teachers[1]}", "--out", str(tmp_path / out))  # fmt: skip
        assert r.exit_code == 0, r.output
        manifest = json.loads((tmp_path / out / "manifest.json").read_text())
        hashes.append(manifest["content_hash"])
    assert hashes[0] == hashes[1]
    assert manifest["targets"]["form"] == "rationale" and manifest["targets"]["store_hash"] == summary["store_hash"]
    assert manifest["targets"]["records"]["kept"] == len(kept)
    left_out = sum(s["left_out_no_rationale"]["train"] for s in manifest["sources"].values())
    assert left_out == len(records) - len(kept) and manifest["splits"]["train"] == len(kept)

    rows = load_from_disk(str(tmp_path / "mix1"))["train"]
    assert sorted(rows["id"]) == sorted(kept)
    for row in rows:
        answer = row["messages"][-1]["content"]
        rec = kept[row["id"]]
        phrase = next(p for p in mlan_join.fa_prompt if f"\n{p} " in answer)
        assert answer == mlan_join.cot_answer(rec["rationale"], phrase, rec["gold"]), row["id"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_store(teachers, tmp_path):
    """SIGKILL part way, start again: the store ends as an uninterrupted run's, record for record."""
    lm, vlm = teachers
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def command(spec: Path) -> list[str]:
        return [sys.executable, "-m", "mlan", "-q", "rationales", str(spec), "--teacher", str(lm),
                "--vision-teacher", str(vlm), "-o", "rationales.batch_size=1", "-o", "rationales.max_new_tokens=24"]  # fmt: skip

    ref_spec = write_spec(tmp_path / "ref")
    done = subprocess.run(command(ref_spec), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    spec = write_spec(tmp_path / "run")
    records = tmp_path / "run" / "store" / "records-0-of-1.jsonl"
    victim = subprocess.Popen(command(spec), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (records.is_file() and records.read_text().count("\n") >= 3):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.time() < deadline, "no record written"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    partial = records.read_text().count("\n")
    assert 3 <= partial < 21, "the run finished before it could be killed"
    left = list((tmp_path / "run" / "store").glob(".rationales-*"))
    assert len(left) == 1 and any(left[0].iterdir()), left  # the killed run's scratch, with its drawn images
    again = subprocess.run(command(spec), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list((tmp_path / "run" / "store").glob(".*rationales-*"))  # removed by the run that resumed

    def comparable(store: Path) -> dict:
        return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in _records(store).items()}

    assert comparable(tmp_path / "run" / "store") == comparable(tmp_path / "ref" / "store")
    lines = records.read_text().splitlines()
    assert len(lines) == len({json.loads(x)["id"] for x in lines}) == 21  # nothing lost, nothing twice


@pytest.mark.parametrize(
    "case",
    [
        "non_generative",
        "missing_teacher",
        "no_gold",
        "other_teacher",
        "corrupt",
        "shard",
        "no_exemplars",
        "exemplar_file",
        "wings_teacher",
    ],
)
def test_bad_input_is_one_line(cli, one_line_error, teachers, tmp_path, case, monkeypatch):
    lm, vlm = teachers
    spec = write_spec(tmp_path)
    args = ["rationales", str(spec), "--teacher", str(lm), "--vision-teacher", str(vlm)]
    if case == "non_generative":
        enc = tmp_path / "encoder"
        enc.mkdir()
        (enc / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
        args[3] = str(enc)
        want = "BertModel does not generate text"
    elif case == "missing_teacher":
        args[3] = str(tmp_path / "nowhere")
        want = "rationales.teacher"
    elif case == "no_gold":
        args += ["-o", "sources.0.adapter=llava"]
        want = "adapter 'llava' rows carry no gold answer"
    elif case == "other_teacher":
        assert cli(*args, "--limit", "1").exit_code == 0
        import shutil

        args[5] = str(shutil.copytree(vlm, tmp_path / "another-vlm"))  # another vision teacher, same store
        want = "a rationale store made with another spec or teacher (vision_teacher differ"
    elif case == "corrupt":
        assert cli(*args, "--limit", "1").exit_code == 0
        f = tmp_path / "store" / "records-0-of-1.jsonl"
        lines = f.read_text().splitlines()
        f.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
        want = f"{f}: line 2: corrupt record"
    elif case == "shard":
        args += ["--shard", "3/2"]
        want = "--shard 3/2: expected i/N"
    elif case == "no_exemplars":
        monkeypatch.setenv("MLAN_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr("urllib.request.urlopen", _offline)
        args += ["-o", "rationales.exemplars={}"]
        want = "cannot read MLAN's exemplars ToviTu/IT_MLLM@af440a6 GPT_rationale/GPT_squad_rationale.json"
    elif case == "wings_teacher":  # a language teacher is loaded text-only, which a Wings model cannot be
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        from mlan.config.wings import WingsConfig
        from mlan.wings import add_wings, save_wings_model

        processor = AutoProcessor.from_pretrained(vlm)
        wings = add_wings(
            LlavaForConditionalGeneration.from_pretrained(vlm), WingsConfig(rank=8, layers=[1], router="modality")
        )
        args[3] = str(save_wings_model(wings, tmp_path / "wings", processor))
        want = f"{tmp_path / 'wings'}: a Wings model has no text-only form"
    else:
        args += ["-o", f"rationales.exemplars.squad={tmp_path / 'none.json'}"]
        want = "rationales.exemplars.squad"
    msg = one_line_error(cli(*args), stdout_ok=True)
    assert want in msg, msg


def _offline(*args, **kwargs):
    raise OSError("no network")


def test_join_refuses_a_store_of_another_spec(cli, one_line_error, monkeypatch, teachers, tmp_path):
    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: ScriptedTeacher(ref, vision))
    spec = write_spec(tmp_path)
    assert _run(cli, spec, teachers, "--limit", "1").exit_code == 0
    base = ["build-mixture", str(spec), "-o", "targets=rationale", "--out", str(tmp_path / "mix")]
    teach = ["-o", f"rationales.teacher={teachers[0]}", "-o", f"rationales.vision_teacher={teachers[1]}"]
    msg = one_line_error(cli(*base), stdout_ok=True)  # the spec's default teachers did not make this store
    assert "teacher, vision_teacher differ" in msg and "set rationales.teacher" in msg
    msg = one_line_error(cli(*base, *teach, "-o", "seed=8"), stdout_ok=True)  # another draw
    assert "draw_hash differ" in msg
    msg = one_line_error(cli(*base, *teach, "-o", "sources.6.chain_of_thought=0.5"), stdout_ok=True)
    assert "chain_of_thought" in msg
    assert not (tmp_path / "mix").exists()


def test_shards_join_into_the_whole_store(cli, monkeypatch, teachers, tmp_path):
    """`--shard 0/2` and `--shard 1/2` split the rows with nothing twice and nothing left out, into one store
    that reads as the unsharded run's; a third run with another count is refused."""
    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: ScriptedTeacher(ref, vision))
    whole = write_spec(tmp_path / "whole")
    assert _run(cli, whole, teachers).exit_code == 0
    sharded = write_spec(tmp_path / "sharded")
    for i in (0, 1):
        r = _run(cli, sharded, teachers, "--shard", f"{i}/2")
        assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "sharded" / "store").glob("records-*"))
    assert files == ["records-0-of-2.jsonl", "records-1-of-2.jsonl"]

    def comparable(store: Path) -> dict:
        return {k: {f: v for f, v in r.items() if f not in ("seconds", "settings")} for k, r in _records(store).items()}

    assert comparable(tmp_path / "sharded" / "store") == comparable(tmp_path / "whole" / "store")
    summary = json.loads((tmp_path / "sharded" / "store" / "summary.json").read_text())
    assert summary["rows"] == sum(n for *_, n, _ in SOURCES)
    r = _run(cli, sharded, teachers, "--shard", "0/3")
    assert r.exit_code == 2 and "holds shards of 2" in r.stderr


def test_a_run_that_failed_before_its_first_record_pins_nothing(cli, one_line_error, monkeypatch, teachers, tmp_path):
    """A bad row stops the draw with the advice `bad_rows: skip`; following it (another draw) is accepted,
    since the failed run recorded nothing under the store.json it left. A store with records still pins."""
    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: ScriptedTeacher(ref, vision))
    rows = [json.loads(x) for x in (DATA / "arc_easy/train.jsonl").read_text().splitlines()[:10]]
    del rows[1]["question"]
    bad = tmp_path / "arc_bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = write_spec(tmp_path)
    arc = [s for s, *_ in SOURCES].index("arc_easy")
    args = ["-o", f"sources.{arc}.dataset={bad}", "-o", f"sources.{arc}.count=9", "--limit", "1"]
    msg = one_line_error(_run(cli, spec, teachers, *args), stdout_ok=True)
    assert "row 1 (line 2): missing field 'question'" in msg and "bad_rows: skip" in msg, msg
    store = tmp_path / "store"
    assert not list(store.glob(".*rationales-*")), list(store.iterdir())  # its scratch went with it
    r = _run(cli, spec, teachers, *args, "-o", f"sources.{arc}.bad_rows=skip")
    assert r.exit_code == 0, r.output
    assert json.loads((store / "store.json").read_text())["draw_hash"] != ""
    assert any(k.startswith("arc_easy:") for k in _records(store))
    # Now the store holds records: the draw without `skip` is another spec, refused.
    msg = one_line_error(_run(cli, spec, teachers, *args[:-2], "-o", "seed=8"), stdout_ok=True)
    assert "another spec or teacher (draw_hash differ" in msg, msg


def test_a_resumed_run_removes_the_scratch_that_killed_runs_left(monkeypatch, teachers, tmp_path):
    """Scratch folders as `kill -9` leaves them (drawn images, the draw's own scratch; the lock file no
    process holds any more) and as a version without locks left them are removed when a run starts on the
    store; one whose lock a running shard holds is kept (removing it would pull the images from under it)."""
    import fcntl

    from mlan.config import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: ScriptedTeacher(ref, vision))
    lm, vlm = teachers
    spec = load_config(write_spec(tmp_path), MixtureSpec)
    spec.rationales.teacher, spec.rationales.vision_teacher = str(lm), str(vlm)
    run.generate_rationales(spec, limit=1)
    store = tmp_path / "store"
    killed, legacy, running = store / ".rationales-killed", store / ".rationales-legacy", store / ".rationales-live"
    for folder in (killed, legacy, running):
        (folder / ".rationales-draw-x" / ".mixture.tmp-y").mkdir(parents=True)
        (folder / "0").write_bytes(b"an image")
    (killed / ".lock").touch()
    with (running / ".lock").open("w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as the shard running beside this one holds it
        result = run.generate_rationales(spec, limit=2)
        assert running.is_dir() and (running / "0").read_bytes() == b"an image"
    assert result.generated > 0
    assert sorted(p.name for p in store.glob(".*rationales-*")) == [".rationales-live"]


class AgreeingTeacher(ScriptedTeacher):
    """Explains every row, finished: every row is kept."""

    def generate(self, prompts, images, sampling, seed):
        from mlan.rationales.teacher import Generation

        return [Generation("The context names it.", 4, True) for _ in prompts]


def test_squad_gold_joined_as_the_dataset_holds_it(cli, monkeypatch, teachers, tmp_path):
    """MLAN joined SQuAD's `answers.text[0]` as is; SQuAD's train split has answers with a space at an end
    (the bundled slice has none, so the rows here get one). The join keeps it, as MLAN's did; the teacher's
    prompt showed it too. Direct-answer rows keep the stripped answer."""
    from datasets import load_from_disk

    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: AgreeingTeacher(ref, vision))
    rows = [json.loads(x) for x in (DATA / "squad/validation.jsonl").read_text().splitlines()]
    for r in rows:
        r["answers"]["text"][0] = f" {r['answers']['text'][0]} "
    padded = tmp_path / "squad.jsonl"
    padded.write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_id = {f"squad:{r['id']}": r for r in rows}
    spec = write_spec(tmp_path)
    squad = ["-o", f"sources.0.dataset={padded}"]
    assert _run(cli, spec, teachers, *squad, "--limit", "2").exit_code == 0
    teach = ["-o", f"rationales.teacher={teachers[0]}", "-o", f"rationales.vision_teacher={teachers[1]}"]
    for targets in ("rationale", "answer"):
        out = tmp_path / targets
        r = cli("build-mixture", spec, *squad, *teach, "-o", f"targets={targets}", "--out", out)
        assert r.exit_code == 0, r.output
        joined = [row for row in load_from_disk(str(out))["train"] if row["id"].startswith("squad:")]
        assert len(joined) == (2 if targets == "rationale" else 4), [row["id"] for row in joined]
        for row in joined:
            gold = by_id[row["id"]]["answers"]["text"][0]
            answer = row["messages"][-1]["content"]
            if targets == "answer":
                assert answer == gold.strip(), answer
                continue
            phrase = next(p for p in mlan_join.fa_prompt if f"\n{p} " in answer)
            assert answer == mlan_join.cot_answer("The context names it.", phrase, gold), answer
            assert answer.endswith(f" {gold}."), answer  # "... is:  Denver Broncos ." as MLAN's


@pytest.mark.parametrize(
    "field",
    ["teacher", "vision_teacher", "settings.temperature", "settings.max_new_tokens_by_adapter.squad", "draw_hash"],
)
def test_each_identity_field_alone_is_refused(cli, one_line_error, monkeypatch, teachers, tmp_path, field):
    """A store holds one teacher's, one vision teacher's, one sampling's rationales of one draw: a later run
    that changes any one of them alone is refused naming that field (had the language teacher been left out
    of the identity, a store made by another teacher would be added to here)."""
    import shutil

    from mlan.rationales import run

    monkeypatch.setattr(run, "open_teacher", lambda ref, vision, settings: ScriptedTeacher(ref, vision))
    lm, vlm = teachers
    spec = write_spec(tmp_path)
    assert _run(cli, spec, teachers, "--limit", "1").exit_code == 0
    store = tmp_path / "store"
    before = sorted(p.name for p in store.iterdir())
    args = ["rationales", str(spec), "--teacher", str(lm), "--vision-teacher", str(vlm), "--limit", "1"]
    if field == "teacher":
        args[3] = str(shutil.copytree(lm, tmp_path / "another-lm"))
    elif field == "vision_teacher":
        args[5] = str(shutil.copytree(vlm, tmp_path / "another-vlm"))
    elif field == "settings.temperature":
        args += ["-o", "rationales.temperature=0.3"]
    elif field == "settings.max_new_tokens_by_adapter.squad":
        args += ["-o", "rationales.max_new_tokens_by_adapter.squad=9"]
    else:  # the spec's draw: another seed, nothing else
        args += ["-o", "seed=8"]
    msg = one_line_error(cli(*args), stdout_ok=True)
    assert f"a rationale store made with another spec or teacher ({field} differ:" in msg, msg
    assert sorted(p.name for p in store.iterdir()) == before  # nothing added to the store
    # The join (`targets: rationale`) pins the draw and both teachers too (the settings are recorded in it).
    if field in ("teacher", "vision_teacher", "draw_hash"):
        join = ["build-mixture", str(spec), "-o", "targets=rationale", "--out", str(tmp_path / "mix")]
        teach = ["-o", f"rationales.teacher={args[3]}", "-o", f"rationales.vision_teacher={args[5]}"]
        msg = one_line_error(cli(*join, *teach, *args[8:]), stdout_ok=True)  # args[8:]: the -o seed=8
        assert f"a rationale store made with another spec or teacher ({field} differ:" in msg, msg
