"""The three everyday commands, exactly as a user types them in a project folder, chained by
their defaults: `mlan build-mixture`, `mlan sft recipes/vicuna.yaml`, `mlan eval --unseen`.

No hub is reachable in tests, so the shipped specs are redirected to local copies through the
documented `--data-dir` options, and the 7B recipe to the tiny model through `-o` overrides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

# The shipped MLAN spec's sources, as local copies in the `<name>/<split>.jsonl` layout.
SOURCES = {
    "squad/train": "squad/validation",  # no SQuAD train slice is at hand: real dev rows stand in
    "strategyqa/train": "strategyqa/train",
    "commonsense_qa/train": "commonsense_qa/train",
    "cosmos_qa/train": "cosmos_qa/validation",
    "arc_easy/train": "arc_easy/train",
    "arc_challenge/train": "arc_challenge/train",
}
# Small enough for a CPU: the 7B recipe's settings with the tiny model and two optimizer steps.
TINY_SFT = [
    "training.precision=fp32",
    "model.dtype=float32",
    "training.gradient_checkpointing=false",
    "training.max_steps=2",
    "training.per_device_train_batch_size=2",
    "training.global_batch_size=4",
    "training.dataloader_num_workers=0",
]


def _released_rows(shared: Path) -> list[dict]:
    """Rows in the layout of MLAN's released MLAN_80k.json (LLaVA JSON, a `model` key, rationale targets),
    made from the bundled ARC and CommonsenseQA slices: the default build reads that file."""
    rows = []
    for source in ("arc_easy/train", "commonsense_qa/train"):
        for i, line in enumerate((shared / f"{source}.jsonl").read_text().splitlines()[:30]):
            r = json.loads(line)
            options = "\n".join(f"{a} {t}" for a, t in zip(r["choices"]["label"], r["choices"]["text"], strict=True))
            human = f"{r['question']} Choose the correct answer from the following options:\n{options}\n"
            gpt = f"The question asks about {r['question'][:30]}.\nIn short, the direct answer is: {r['answerKey']}."
            rows.append(
                {
                    "id": f"{source.split('/')[0]}-{i}",
                    "model": "Yi-1.5-34B",
                    "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}],
                }
            )
    return rows


def _local_data(shared: Path, eval_data: Path, dest: Path) -> Path:
    """Training sources (MLAN's release and the sources it was drawn from) and every evaluation set of the
    specs' contamination checks."""
    shutil.copytree(eval_data, dest)
    (dest / "mlan_80k").mkdir()
    (dest / "mlan_80k" / "MLAN_80k.json").write_text(json.dumps(_released_rows(shared)))
    for dst, src in SOURCES.items():
        (dest / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / f"{src}.jsonl", dest / f"{dst}.jsonl")
    # lmms-lab/POPE names its question column `question`; the slice has POPE's original `text`.
    pope = dest / "pope" / "test.jsonl"
    rows = [json.loads(x) for x in pope.read_text().splitlines()]
    pope.write_text("".join(json.dumps({**r, "question": r["text"]}) + "\n" for r in rows))
    return dest


def _overrides(items: list[str]) -> list[str]:
    return [a for item in items for a in ("-o", item)]


@pytest.mark.slow
def test_three_commands_chain_by_defaults(cli, tmp_path, monkeypatch, shared_data, eval_data, tiny_llava_dir):
    data = _local_data(shared_data, eval_data, tmp_path / "local-data")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)

    r = cli("build-mixture", "--data-dir", data)  # MLAN's released rows, as the paper trained on them
    assert r.exit_code == 0, r.output
    assert "targets: as the rows give them" in r.stdout
    mixture = Path("runs/mixtures/mlan_released")
    manifest = json.loads((mixture / "manifest.json").read_text())
    assert manifest["name"] == "mlan_released" and manifest["splits"] == {"train": 60, "validation": 0}
    assert manifest["targets"] == {"form": "given"} and manifest["contamination"]["checked"]

    r = cli("sft", "recipes/vicuna.yaml", *_overrides([f"model.path={tiny_llava_dir}", *TINY_SFT]))
    assert r.exit_code == 0, r.output
    run = Path("runs/vicuna")
    assert json.loads((run / "mixture_manifest.json").read_text())["content_hash"] == manifest["content_hash"]
    assert json.loads(Path("runs/latest.json").read_text())["path"] == str(run.resolve())

    r = cli("eval", "--unseen", "--data-dir", data, "--image-dir", data / "images", "--limit", "2")
    assert r.exit_code == 0, r.output
    results = [json.loads(f.read_text()) for f in Path("runs/eval").glob("*/results.json")]
    assert [res["model"] for res in results] == [str(run.resolve())]
    suites = {x["suite"] for x in results[0]["results"]}
    assert suites == {"eight_task", "unseen_language", "unseen_vision"}
    seen = {x["task"] for x in results[0]["results"] if x["seen"]}
    assert {"commonsense_qa", "arc_easy", "arc_challenge"} <= seen


def test_offline_defaults_fail_fast_with_one_line(cli, one_line_error):
    msg = one_line_error(cli("build-mixture"))
    assert "source 'mlan_80k' (WangResearchLab/MLAN): the Hugging Face Hub is unreachable" in msg
    assert "--data-dir DIR" in msg
    assert not Path("runs/mixtures/mlan_released").exists()

    # The model is checked first (two small files), before a mixture is looked for or built.
    msg = one_line_error(cli("sft", "recipes/vicuna.yaml"))
    assert "model.path runs/stage1/llava-vicuna-7b-v1.5-pretrain: model folder not found" in msg

    msg = one_line_error(cli("eval", "--unseen"))
    assert "no model given and no finished run recorded under runs/: name one" in msg

    msg = one_line_error(cli("merge", "--original", "org/llm"))
    assert "no finished run under runs/" in msg
