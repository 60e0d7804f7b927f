"""Per-source shares as MLAN draws them: the shipped specs' counts, and sources drawn with replacement
(`replace: true`): a count above the source's size, repeats identical to the first rendering and counted
in the manifest, distinct validation rows, the same bytes for the same seed, and one-line errors."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from test_mixture import build_ok, read_jsonl, write_jsonl, write_spec


def _by_base_id(rows) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["id"].split("#")[0], []).append(r)
    return out


def test_count_above_size_with_replacement(cli, shared_data, tmp_path):
    import datasets

    spec = write_spec(
        tmp_path / "r.yaml",
        validation=10,
        sources=[
            {
                "name": "sqa",
                "dataset": str(shared_data / "strategyqa/validation.jsonl"),  # 153 rows
                "adapter": "strategyqa",
                "count": 450,
                "replace": True,
            },
            {"name": "csqa", "dataset": str(shared_data / "commonsense_qa/train.jsonl"), "adapter": "commonsense_qa",
             "count": 50},
        ],
    )  # fmt: skip
    m = build_ok(cli, spec, tmp_path / "out")
    dd = datasets.load_from_disk(str(tmp_path / "out"))
    s = m["sources"]["sqa"]
    assert (s["train"], s["drawn_with_replacement"], m["splits"]["train"]) == (450, True, 500)
    assert m["sources"]["csqa"]["repeats"] == 0 and not m["sources"]["csqa"]["drawn_with_replacement"]
    train = [r for r in dd["train"] if r["source"] == "sqa"]
    groups = _by_base_id(train)
    distinct = len(groups)
    assert s["repeats"] == 450 - distinct and len({r["id"] for r in train}) == 450  # ids stay unique: `#2`, `#3`...
    # 450 uniform draws from the 153 - 9 rows left after validation: about n (1 - e^(-450/n)) distinct rows.
    n = 153 - m["sources"]["sqa"]["validation"]
    assert abs(distinct - n * (1 - math.exp(-450 / n))) < 8
    for copies in groups.values():  # a repeat is the row as first rendered (MLAN repeats formatted rows)
        assert all(c["messages"] == copies[0]["messages"] for c in copies)
        assert sorted(c["id"] for c in copies)[1:] == sorted(
            f"{copies[0]['id'].split('#')[0]}#{k}" for k in range(2, len(copies) + 1)
        )
    validation = {r["id"] for r in dd["validation"] if r["source"] == "sqa"}
    assert len(validation) == m["sources"]["sqa"]["validation"] and not validation & set(groups)
    # Templates and tokens count every trained row, repeats included.
    assert sum(v for k, v in m["templates"]["used"].items()) == 500
    again = build_ok(cli, spec, tmp_path / "again")
    assert again["content_hash"] == m["content_hash"]
    other = build_ok(cli, spec, tmp_path / "other", "-o", "seed=1")
    assert other["content_hash"] != m["content_hash"]


def test_vision_rows_repeat_with_their_images(cli, shared_data, tmp_path):
    import datasets

    vqa = read_jsonl(Path(__file__).parents[1] / "mlan/assets/data/vqav2/train.jsonl")
    for r in vqa:
        r["image"] = str(shared_data / "images" / r["image"])
    spec = write_spec(
        tmp_path / "v.yaml",
        sources=[{"name": "vqa", "dataset": str(write_jsonl(tmp_path / "vqa.jsonl", vqa)), "adapter": "vqav2",
                  "count": 100, "replace": True}],
    )  # fmt: skip
    m = build_ok(cli, spec, tmp_path / "out")
    assert m["modalities"]["vision"]["images"] == 100 and m["sources"]["vqa"]["repeats"] >= 100 - len(vqa)
    ds = datasets.load_from_disk(str(tmp_path / "out"))["train"].cast_column(
        "images", datasets.List(datasets.Image(decode=False))
    )
    for copies in _by_base_id(ds).values():
        assert len({c["images"][0]["bytes"] for c in copies}) == 1 and copies[0]["images"][0]["bytes"]


def test_bad_rows_are_drawn_again(cli, one_line_error, shared_data, tmp_path):
    rows = read_jsonl(shared_data / "arc_easy/train.jsonl")[:20]
    for r in rows[:5]:
        r["answerKey"] = "Z"  # not among the labels: a bad row
    spec = write_spec(
        tmp_path / "b.yaml",
        sources=[{"name": "arc", "dataset": str(write_jsonl(tmp_path / "arc.jsonl", rows)), "adapter": "arc",
                  "count": 60, "replace": True, "bad_rows": "skip"}],
    )  # fmt: skip
    m = build_ok(cli, spec, tmp_path / "out")
    assert m["sources"]["arc"]["train"] == 60 and m["sources"]["arc"]["bad_rows"] == 5
    all_bad = write_jsonl(tmp_path / "bad.jsonl", rows[:5])
    err = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "x", "-o", f"sources.0.dataset={all_bad}"))
    assert "no usable row left to draw training rows from" in err


def test_count_above_size_needs_replace(cli, one_line_error, shared_data, tmp_path):
    spec = write_spec(
        tmp_path / "n.yaml",
        validation=5,
        sources=[{"name": "arc", "dataset": str(shared_data / "arc_easy/train.jsonl"), "adapter": "arc", "count": 300}],
    )
    err = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "x"))
    assert "asks for 305 rows (300 train + 5 validation) but holds only 200" in err and "replace: true" in err
    err = one_line_error(
        cli("build-mixture", spec, "--out", tmp_path / "y", "-o", "sources.0.replace=true", "-o", "validation=200")
    )
    assert "validation rows take all 200 rows" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_shares_follow_weights_not_sizes(cli, shared_data, tmp_path):
    """MLAN's shares (SQuAD 1/4, the others 3/16) under a modality split: weights, replace for the small ones."""
    spec = write_spec(
        tmp_path / "w.yaml",
        modality_split={"language": 320},
        sources=[
            {"name": "squad", "dataset": str(shared_data / "squad/validation.jsonl"), "adapter": "squad", "weight": 4},
            {"name": "sqa", "dataset": str(shared_data / "strategyqa/validation.jsonl"), "adapter": "strategyqa",
             "weight": 12, "replace": True},
        ],
    )  # fmt: skip
    m = build_ok(cli, spec, tmp_path / "out")
    assert (m["sources"]["squad"]["train"], m["sources"]["sqa"]["train"]) == (80, 240)
    assert m["sources"]["sqa"]["repeats"] > 240 - 153
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["spec"]["sources"][1]["replace"] is True
    assert Counter(m["templates"]["used"]).total() == 320


def test_shipped_specs_are_the_mlan_mixtures():
    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.paths import shipped_dir

    splits = {
        "mlan": (80000, 0),
        "mlan_v_llama2": (70000, 10000),
        "mlan_v_vicuna": (40000, 40000),
        "vision_only": (0, 80000),
    }
    for name, (lang, vis) in splits.items():
        spec = load_config(shipped_dir("data_mixtures") / f"{name}.yaml", MixtureSpec)
        counts = {s.name: s.count for s in spec.sources}
        by_modality = {m: sum(s.count for s in spec.sources if s.modality == m) for m in ("language", "vision")}
        assert (by_modality["language"], by_modality["vision"], spec.size) == (lang, vis, 80000)
        # MLAN's shares (prepare_lang_it.py): SQuAD 1/4, the other four 3/16 each, ARC split by its pool's sizes.
        if lang:
            assert counts["squad"] == lang // 4
            assert counts["strategyqa"] == counts["commonsense_qa"] == counts["cosmos_qa"] == lang * 3 // 16
            assert counts["arc_easy"] + counts["arc_challenge"] == lang * 3 // 16
            assert abs(counts["arc_easy"] / counts["arc_challenge"] - 2251 / 1119) < 0.01
        assert all(s.replace for s in spec.sources) and spec.tokenizer == "lmsys/vicuna-7b-v1.5"
        assert {e.task for e in spec.contamination.evals} >= {"boolq", "commonsense_qa", "arc_easy", "pope", "gqa"}
        covers = {t for s in spec.sources if s.count for t in s.covered_tasks()}
        assert covers == ({"commonsense_qa", "arc_easy", "arc_challenge"} if lang else set())
