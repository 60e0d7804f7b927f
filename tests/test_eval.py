"""mlan eval end to end on the tiny model, offline: every suite on local slices, scripted models
through the real extraction/scoring path, comparisons, cache/resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from evaldata import BUNDLED_IMAGES, GQA_ROWS


@pytest.fixture(scope="session")
def model_trio(tiny_llava_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny base LLM (language model extracted from the tiny LLaVA, saved as a causal LM),
    the tiny LLaVA, and a third LLaVA (other seed) whose mixture manifest covers CommonsenseQA/ARC."""
    from mlan.models import save_language_model
    from mlan.tiny import save_tiny_llava

    d = tmp_path_factory.mktemp("trio")
    base = save_language_model(tiny_llava_dir, d / "base-llm")
    tuned = save_tiny_llava(d / "tuned", size="tiny", seed=1)
    (tuned / "mixture_manifest.json").write_text(
        json.dumps({"name": "mlan", "covers_eval_tasks": ["commonsense_qa", "arc_easy", "arc_challenge"]})
    )
    return {"base": base, "llava": tiny_llava_dir, "tuned": tuned}


# --------------------------------------------------------------------------- scripted models


class Scripted:
    """A scripted model for the generate harness: answers from a lookup of the gold answers by
    prompt, or always the same text (`constant`)."""

    multimodal = True

    def __init__(self, name: str, answers: dict[str, str] | None = None, constant: str | None = None, processor=None):
        self.name = name
        self.processor = processor
        self.answers = answers or {}
        self.constant = constant
        self.calls = 0

    def apply_chat(self, messages):
        """The chat prompt as a real LLaVA processor renders it (vision suites)."""
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, requests, *, max_new_tokens, stop):
        self.calls += len(requests)
        out = []
        for r in requests:
            if self.constant is not None:
                out.append(self.constant)
                continue
            assert r.prompt in self.answers, f"scripted model has no answer for prompt {r.prompt[:80]!r}"
            out.append(self.answers[r.prompt])
        return out


def _gold_answers(suite, data_dir, image_dir, *, as_text: bool, apply_chat) -> tuple[dict, dict[str, list]]:
    """The prompt as built -> the answer a perfect model would write in the suite's protocol (MLAN's:
    the letter or the choice's text, then the closing quote; mlan's lenient one: "(B)"); and per
    task the gold answers."""
    from mlan.evaluate.generate import build_prompt
    from mlan.evaluate.tasks import load_task_data, to_items

    answers, golds = {}, {}
    for t in suite.tasks:
        items = to_items(t, load_task_data(t, data_dir), limit=6, image_dir=image_dir)
        golds[t.name] = [it.answer for it in items]
        for it in items:
            if it.kind == "mc" and as_text:
                ans = it.choices[ord(it.answer) - 65]  # the choice's text instead of its letter
            elif it.kind == "mc":
                ans = it.answer if suite.extraction_of(t) == "mlan" else f" ({it.answer})"
            else:
                ans = f" {it.answer.capitalize()}"
            answers[build_prompt(it, t, suite, apply_chat)] = f'{ans}" and more'
    return answers, golds


@pytest.mark.parametrize("suite_name", ["unseen_language", "unseen_vision", "quickstart"])
def test_scripted_models_score_exactly(suite_name, eval_data, tiny_llava_dir, tmp_path):
    """Always-correct scores 100% (letters in one run, choice texts in another), always-"A" scores
    the share of gold "A" answers, through prompts, extraction and scoring."""
    from transformers import AutoProcessor

    from mlan.evaluate import EvalRun, load_suite, run_evaluation

    proc = AutoProcessor.from_pretrained(tiny_llava_dir)
    suite = load_suite(suite_name)
    images = eval_data / "images"
    chat = Scripted("chat", processor=proc).apply_chat
    letters, golds = _gold_answers(suite, eval_data, images, as_text=False, apply_chat=chat)
    texts, _ = _gold_answers(suite, eval_data, images, as_text=True, apply_chat=chat)
    report = run_evaluation(
        EvalRun(limit=6, data_dir=str(eval_data), image_dir=str(images), out=str(tmp_path)),
        models=[
            Scripted(n, a, c, proc)
            for n, a, c in (("right", letters, None), ("right-text", texts, None), ("always-a", None, 'A"'))
        ],
        suites=[suite],
    )
    right, right_text, always_a = report.models
    for r in right.results + right_text.results:
        assert r.metrics["acc"] == 1.0, (r.model, r.task)
    for r in always_a.results:
        gold = golds[r.task]
        assert r.metrics["acc"] == pytest.approx(sum(g == "A" for g in gold) / len(gold)), r.task
    if suite_name == "unseen_vision":
        pope = right.get("unseen_vision", "pope")
        assert (pope.metric, pope.value) == ("f1", 1.0)
        assert set(pope.metrics) >= {"acc", "precision", "recall", "f1", "yes_ratio"}
        labels = [json.loads(x)["label"] for x in (eval_data / "pope" / "test.jsonl").read_text().splitlines()[:6]]
        assert pope.metrics["yes_ratio"] == pytest.approx(labels.count("yes") / 6)
        sqa = right.get("unseen_vision", "scienceqa")
        samples = [
            json.loads(x)
            for x in (tmp_path / "right" / "samples" / "unseen_vision__scienceqa.jsonl").read_text().splitlines()
        ]
        assert sqa.n == 6 and {s["image"] for s in samples} == {True, False}  # with and without images
    # Prompts follow MLAN's protocol.
    prompt = json.loads(
        (tmp_path / "right" / "samples" / f"{suite_name}__{suite.tasks[0].name}.jsonl").read_text().splitlines()[0]
    )["prompt"]
    if suite_name == "quickstart":
        assert all(
            r.source.startswith(str(BUNDLED_IMAGES.parent)) for r in right.results
        )  # bundled, no --data-dir needed
    elif suite_name == "unseen_language":
        assert prompt.startswith("User: Context: ") and prompt.endswith('\nAssistant: The best answer is"')
        assert "\nChoose the best option from the choices provided:\nA: " in prompt
    else:
        assert prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")
        assert " USER: <image>\n" in prompt and prompt.endswith('ASSISTANT: The best answer is "')
    for r in right.results:
        assert r.extraction == ("lenient" if suite_name == "quickstart" else "mlan")


def test_unseen_suites_on_tiny_llava_cli(cli, tiny_llava_dir, eval_data, tmp_path):
    """Both unseen suites through `mlan eval --unseen` on the tiny LLaVA, offline; then resume from cache."""
    out = tmp_path / "out"
    args = ["eval", tiny_llava_dir, "--unseen", "--suite", "unseen_language", "--limit", "3"]
    args += ["--data-dir", eval_data, "--image-dir", eval_data / "images", "--out", out]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "tiny-llava" / "results.json").read_text())
    rows = {(x["suite"], x["task"]): x for x in data["results"]}
    assert set(rows) == {("unseen_language", t) for t in ("race_high", "openbookqa", "boolq", "hellaswag")} | {
        ("unseen_vision", t) for t in ("realworldqa", "ai2d", "pope", "gqa", "scienceqa")
    }
    for x in rows.values():
        assert x["n"] == 3 and 0.0 <= x["value"] <= 1.0 and x["engine"] == "generate" and not x["seen"]
        assert x["modality"] == ("vision" if x["suite"] == "unseen_vision" else "language")
    assert "| unseen_vision | pope | f1 |" in r.output
    # MLAN's published averages, each named: language over its four, vision as the v3 table (GQA,
    # RealWorldQA, AI2D, POPE-F1) and as v1 (with ScienceQA).
    avgs = {a["name"]: a for a in data["averages"]}
    assert set(avgs) == {"language_avg", "vision_avg_v3", "vision_avg_v1"}
    for a in avgs.values():
        vals = [rows[(a["suite"], t)]["value"] for t in a["tasks"]]
        assert a["value"] == pytest.approx(sum(vals) / len(vals)) and not a["missing"]
    assert avgs["vision_avg_v3"]["tasks"] == ["gqa", "realworldqa", "ai2d", "pope"]
    assert "| unseen_vision | **vision_avg_v3** (gqa, realworldqa, ai2d, pope) |" in r.output
    assert "| unseen_language | **language_avg** (race_high, openbookqa, boolq, hellaswag) |" in r.output
    assert {x["extraction"] for x in rows.values()} == {"mlan"}
    # A second run finds every task in the cache and does not load the model.
    from mlan.evaluate import cache

    mtimes = {f: f.stat().st_mtime_ns for f in (out / "tiny-llava" / "cache").iterdir()}
    assert len(mtimes) == 9
    r2 = cli(*args)
    assert r2.exit_code == 0
    assert {f: f.stat().st_mtime_ns for f in (out / "tiny-llava" / "cache").iterdir()} == mtimes
    assert json.loads((out / "tiny-llava" / "results.json").read_text())["results"] == data["results"]
    assert cache.CACHE_VERSION == 1


def test_interrupted_run_resumes(tiny_llava_dir, eval_data, tmp_path, monkeypatch):
    """A run that dies in its second task keeps the first; the rerun only does what is left."""
    from mlan.evaluate import EvalRun, generate, load_suite, run_evaluation

    suite = load_suite("unseen_language")
    calls = []
    real = generate.run_generate_task

    def flaky(task, *a, **k):
        calls.append(task.name)
        if task.name == "openbookqa" and calls.count("openbookqa") == 1:
            raise KeyboardInterrupt
        return real(task, *a, **k)

    monkeypatch.setattr(generate, "run_generate_task", flaky)
    run = EvalRun(
        models=[str(tiny_llava_dir)],
        tasks=["race_high", "openbookqa"],
        limit=2,
        data_dir=str(eval_data),
        out=str(tmp_path),
    )
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(run, suites=[suite])
    assert [f.name for f in (tmp_path / "tiny-llava" / "cache").iterdir()] == ["unseen_language__race_high.json"]
    report = run_evaluation(run, suites=[suite])
    assert calls == ["race_high", "openbookqa", "openbookqa"]
    assert [r.task for r in report.models[0].results] == ["race_high", "openbookqa"]


@pytest.mark.slow
def test_eight_task_compare_trio_cli(cli, model_trio, eval_data, tmp_path):
    """The eight-task suite (lm-eval) on the base LLM, the tiny LLaVA and a third model: side-by-side
    table with deltas, suite and language averages, seen marks, PNG chart. The LLaVA's language
    model and the extracted base LLM are the same weights, so their scores are equal."""
    out = tmp_path / "cmp"
    r = cli(
        "eval", model_trio["base"], model_trio["llava"], model_trio["tuned"],
        "--reference", model_trio["base"], "--limit", "2", "--data-dir", eval_data, "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| suite | task | base-llm (ref) | tiny-llava | Δ | tuned | Δ |" in r.output
    for task in (
        "gsm8k",
        "commonsense_qa",
        "arc_easy",
        "arc_challenge",
        "race_high",
        "hellaswag",
        "mmlu",
        "openbookqa",
    ):
        assert f"| eight_task | {task} |" in r.output
    assert "**language average**" in r.output and "`*` seen in training" in r.output
    cmp = json.loads((out / "comparison.json").read_text())
    rows = {x["name"]: x for x in cmp["rows"] if x["kind"] == "task"}
    assert rows["commonsense_qa"]["seen"] == {"base-llm": False, "tiny-llava": False, "tuned": True}
    assert rows["gsm8k"]["seen"]["tuned"] is False
    for x in rows.values():
        assert x["values"]["base-llm"] == x["values"]["tiny-llava"]
        assert x["deltas"]["tiny-llava"] == 0.0
        assert x["deltas"]["tuned"] == pytest.approx(x["values"]["tuned"] - x["values"]["base-llm"])
    png = out / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "tuned" / "results.json").read_text())["results"]
    assert {x["task"] for x in res if x["seen"]} == {"commonsense_qa", "arc_easy", "arc_challenge"}
    assert all(x["engine"] == "lm_eval" and x["n"] == 2 and x["modality"] == "language" for x in res)
    assert next(x for x in res if x["task"] == "race_high")["source"].endswith("race_high/test.jsonl")
    gsm = next(x for x in res if x["task"] == "gsm8k")  # both of lm-eval's GSM8K filters reported
    assert set(gsm["extra"]) == {"exact_match,strict-match"} and gsm["extraction"] == "lm_eval"
    assert "| eight_task | gsm8k [exact_match,strict-match] |" in r.output


def test_suite_from_file_and_overrides(cli, tiny_llava_dir, eval_data, tmp_path):
    """A suite given as a YAML file, a per-task data file and a field override."""
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "name: mine\nengine: generate\nmodality: language\n"
        "tasks:\n  - name: bq\n    format: boolq\n    hub: {path: google/boolq, split: validation}\n    metric: acc\n"
    )
    r = cli(
        "eval", tiny_llava_dir, "--suite", suite, "--data", f"bq={eval_data / 'boolq' / 'validation.jsonl'}",
        "-o", "max_new_tokens=3", "--limit", "4", "--out", tmp_path / "o",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "tiny-llava" / "results.json").read_text())["results"]
    assert [(x["suite"], x["task"], x["n"]) for x in res] == [("mine", "bq", 4)]
    assert "yes_ratio" in res[0]["metrics"]


def test_shipped_suites_validate():
    from mlan.config.shipped import kind_models
    from mlan.evaluate import load_suite
    from mlan.paths import shipped_files

    assert kind_models()["evaluations"].__name__ == "EvalSuite"
    names = {f.stem for f in shipped_files("evaluations")}
    assert {"eight_task", "unseen_language", "unseen_vision"} <= names
    assert [t.name for t in load_suite("eight_task").tasks] == [
        "gsm8k", "commonsense_qa", "arc_easy", "arc_challenge", "race_high", "hellaswag", "mmlu", "openbookqa",
    ]  # fmt: skip
    v = load_suite("unseen_vision")
    assert {t.name: t.max_new_tokens or v.max_new_tokens for t in v.tasks} == {
        "realworldqa": 16, "ai2d": 8, "pope": 4, "gqa": 8, "scienceqa": 8,
    }  # fmt: skip


# --------------------------------------------------------------------------- bad input


def test_bad_input_one_line_exit_2(cli, one_line_error, tiny_llava_dir, model_trio, eval_data, tmp_path):
    assert "did you mean 'unseen_vision'" in one_line_error(cli("eval", tiny_llava_dir, "--suite", "unseen_visoin"))
    assert "did you mean 'hellaswag'" in one_line_error(cli("eval", tiny_llava_dir, "--tasks", "helaswag"))
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = one_line_error(
        cli("eval", tiny_llava_dir, "--tasks", "boolq", "--suite", "unseen_language", "--data-dir", empty)
    )
    assert "missing local data for task 'boolq'" in msg
    msg = one_line_error(cli("eval", tiny_llava_dir, "--tasks", "boolq", "--suite", "unseen_language"))
    assert "'google/boolq' is not a local path and the Hugging Face Hub is unreachable" in msg and "--data-dir" in msg
    assert "model folder not found" in one_line_error(cli("eval", tmp_path / "nope"))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_llava_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert "no model weights" in one_line_error(cli("eval", no_weights))
    no_proc = tmp_path / "no-proc"
    shutil.copytree(tiny_llava_dir, no_proc)
    for f in ("preprocessor_config.json", "processor_config.json"):
        (no_proc / f).unlink(missing_ok=True)
    assert "without an image processor" in one_line_error(cli("eval", no_proc))
    msg = one_line_error(cli("eval", model_trio["base"], "--suite", "unseen_vision", "--data-dir", eval_data))
    assert "vision tasks but this is a text-only model" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nengine: generate\nmodality: language\ntasks:\n  - name: boolqq\n    hub: {path: a, split: b}\n    metric: acc\n"
    )
    assert "did you mean 'boolq'" in one_line_error(cli("eval", tiny_llava_dir, "--suite", bad))
    assert "--reference" in one_line_error(cli("eval", tiny_llava_dir, "--reference", "other", "--data-dir", eval_data))


def test_hub_loading_joins_gqa_images(monkeypatch):
    """Hub path (no network here): rows come from datasets.load_dataset; GQA's images, kept in a
    second config, are joined on imageId."""
    import datasets
    from PIL import Image

    import mlan.hub
    from mlan.evaluate import load_suite
    from mlan.evaluate.tasks import load_task_data, to_items

    img = Image.new("RGB", (8, 8))
    tables = {
        ("lmms-lab/GQA", "testdev_balanced_instructions", "testdev"): GQA_ROWS[:2],
        ("lmms-lab/GQA", "testdev_balanced_images", "testdev"): [
            {"id": r["imageId"], "image": img} for r in reversed(GQA_ROWS[:2])
        ],
    }
    calls = []

    def fake_load(path, name=None, split=None, revision=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(tables[(path, name, split)])

    monkeypatch.setattr(mlan.hub, "require_hub", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = load_suite("unseen_vision").task("gqa")
    data = load_task_data(task)
    items = to_items(task, data)
    assert data.source == "hub:lmms-lab/GQA/testdev_balanced_instructions[testdev]"
    assert [it.answer for it in items] == ["man", "clock"] and all(it.image.size == (8, 8) for it in items)
    assert len(calls) == 2


def test_run_yaml_and_flags_build_the_same_run(cli, one_line_error, tiny_llava_dir, tmp_path):
    """`mlan eval run.yaml` and `mlan eval MODEL --flags` build one EvalRun: the same scores, and
    each results folder keeps the run it did as run.yaml (which replays it)."""
    import yaml

    from mlan.evaluate import EvalRun

    flags = ("--suite", "quickstart", "--tasks", "boolq,arc_easy", "--limit", "3", "-o", "max_new_tokens=4")
    r = cli("eval", tiny_llava_dir, *flags, "--out", tmp_path / "flags")
    assert r.exit_code == 0, r.output
    kept = yaml.safe_load((tmp_path / "flags" / "run.yaml").read_text())
    assert EvalRun.model_validate(kept) == EvalRun(
        models=[str(tiny_llava_dir)], suites=["quickstart"], tasks=["boolq", "arc_easy"], limit=3,
        out=str(tmp_path / "flags"), suite_overrides=["max_new_tokens=4"],
    )  # fmt: skip
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({**kept, "out": str(tmp_path / "yaml")}))
    r = cli("eval", run_yaml)
    assert r.exit_code == 0, r.output

    def scores(folder):
        rows = json.loads((folder / "tiny-llava" / "results.json").read_text())["results"]
        return [(x["task"], x["value"], x["n"]) for x in rows]

    assert scores(tmp_path / "yaml") == scores(tmp_path / "flags")
    # Flags and -o win over the file.
    r = cli("eval", run_yaml, "-o", "limit=1", "--out", tmp_path / "one")
    assert r.exit_code == 0, r.output
    assert [n for _, _, n in scores(tmp_path / "one")] == [1, 1]
    # A name that is neither a run nor a suite field is reported by the suite, with the override named.
    msg = one_line_error(cli("eval", run_yaml, "-o", "limt=1"))
    assert msg.startswith("error: ") and "limt: unknown field" in msg and "(from -o limt=1)" in msg, msg
