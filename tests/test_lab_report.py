"""The lab's report from typed per-seed results, no training: statistics over seeds, the effects
computed from the numbers (held / did NOT show), the table, lab.json's shape and the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlan.lab.plan import LabPlan
from mlan.lab.report import E1, Effects, Stat, lab_table, read_effects, reading_text, summarise, write_report
from mlan.lab.results import MergePoint, SeedResult, VariantScore

VARIANTS = ["vision_only", "language_only", "mlan_v12"]


def seed_result(seed: int, models: dict[str, tuple], merges: dict[float, tuple] | None = None) -> SeedResult:
    """A seed's results from (language, vision) per model and per merge alpha."""
    scores = [VariantScore(name, lang, vis, {"lab_language/add": lang or 0.0}) for name, (lang, vis) in models.items()]
    points = [MergePoint(a, lang, vis) for a, (lang, vis) in (merges or {}).items()]
    return SeedResult(seed, scores, points, timings={"world": 1.0, "pretrain": 2.5}, seconds=3.5)


def plan(seeds=(0,), alphas=(0.5, 1.0)) -> LabPlan:
    return LabPlan(seeds=list(seeds), variants=list(VARIANTS), alphas=list(alphas))


HELD = dict(
    models={
        "pretrained_llm": (0.96, None),
        "stage1": (0.95, 0.3),
        "vision_only": (0.6, 1.0),
        "language_only": (0.94, 0.3),
        "mlan_v12": (0.93, 0.99),
    },
    merges={0.5: (0.92, 0.95), 1.0: (0.95, 0.3)},
)
NOT_HELD = dict(
    models={"stage1": (0.95, 0.3), "vision_only": (0.94, 1.0), "mlan_v12": (0.80, 0.7)},
    merges={0.5: (0.95, 0.9), 1.0: (0.95, 0.3)},
)


def test_effects_held_when_the_numbers_say_so():
    s = summarise(plan(), [seed_result(0, **HELD)], seconds=60)
    e = s.effects
    assert e.e1 and e.e1.shown and e.e1.drop == pytest.approx(0.35)
    assert e.e2 and e.e2.shown and e.e2.keeps_language and e.e2.matches_vision
    assert e.e2.language_only.language == 0.94
    # E3 picks the best language among the merges that keep vision (alpha 1 loses it)
    assert e.e3 and e.e3.shown and e.e3.alpha == 0.5 and e.e3.best_alpha == 1.0 and e.e3.meaningful
    assert "E1 held" in s.reading and "E2 held" in s.reading and "E3 held" in s.reading
    assert "alpha 0.5 recovered language 60.0 -> 92.0" in s.reading and "one seed" in s.reading
    assert "language-only scored 94.0 / 30.0" in s.reading and "Wall time 1.0 min." in s.reading


def test_effects_did_not_hold_when_the_numbers_fail():
    s = summarise(plan(), [seed_result(0, **NOT_HELD)], seconds=60)
    e = s.effects
    assert e.e1 and not e.e1.shown and e.e2 and not e.e2.shown and e.e3 and not e.e3.shown
    assert not e.e2.keeps_language and not e.e2.matches_vision and not e.e3.meaningful
    text = s.reading
    assert "E1 did NOT show" in text and "E2 did NOT show" in text and "E3 did NOT show" in text
    assert "language fell" in text and "vision stayed below" in text and "little language to recover" in text
    assert "held" not in text
    assert "language-only" not in text  # not run: no language-only sentence


def test_each_threshold_is_the_margin():
    # E1: a drop of exactly the margin counts; a rise reads "changed"
    e = read_effects(summarise(plan(), [seed_result(0, {"stage1": (0.9, 0.3), "vision_only": (0.85, 1.0)})], 1).rows)
    assert e.e1 == E1(shown=True, stage1_language=0.9, vision_only_language=0.85, drop=pytest.approx(0.05))
    rows = summarise(plan(), [seed_result(0, {"stage1": (0.5, 0.3), "vision_only": (0.6, 1.0)})], 1).rows
    text = reading_text(read_effects(rows), 1, 1)
    assert "E1 did NOT show: vision-only tuning changed language accuracy 50.0 -> 60.0" in text
    # E3: a merge that keeps vision but gains less than the margin does not count
    models = {"stage1": (0.95, 0.3), "vision_only": (0.6, 1.0)}
    s = summarise(plan(), [seed_result(0, models, {0.5: (0.64, 1.0), 1.0: (0.95, 0.3)})], 1)
    assert s.effects.e3 and not s.effects.e3.shown and s.effects.e3.best_language == 0.95


def test_not_measured_effects_are_named():
    s = summarise(LabPlan(seeds=[0], variants=[], alphas=[]), [seed_result(0, {"stage1": (0.9, 0.3)})], 1)
    assert s.effects == Effects() and s.effects.missing == ["E1", "E2", "E3"]
    assert "Not measured in this run: E1, E2, E3." in s.reading


def test_mean_and_range_over_seeds():
    a = seed_result(0, **HELD)
    b = seed_result(1, {**HELD["models"], "vision_only": (0.5, 0.9)}, {0.5: (0.82, 0.85)})  # no alpha-1 point
    s = summarise(plan(seeds=(0, 1)), [a, b], seconds=120)
    vo = next(r for r in s.rows if r.name == "vision_only")
    assert vo.language == Stat(mean=pytest.approx(0.55), min=0.5, max=0.6, n=2)
    assert vo.per_seed == [(0.6, 1.0), (0.5, 0.9)]
    merge1 = next(r for r in s.rows if r.alpha == 1.0)
    assert merge1.key == "merge_1" and merge1.language and merge1.language.n == 1
    assert next(r for r in s.rows if r.name == "pretrained_llm").vision is None
    assert "mean over 2 seeds" in s.reading
    assert s.effects.e1 and s.effects.e1.vision_only_language == pytest.approx(0.55)

    table = lab_table(s).splitlines()
    assert table[0] == "| model | language | vision | seed 0 (lang / vis) | seed 1 (lang / vis) |"
    assert "| vision only | 55.0 [50.0-60.0] | 95.0 [90.0-100.0] | 60.0 / 100.0 | 50.0 / 90.0 |" in table
    assert "| merge alpha 1 (vision only + LLM) | 95.0 | 30.0 | 95.0 / 30.0 | n/a / n/a |" in table
    assert "| pretrained LLM (text only) | 96.0 [96.0-96.0] | - | 96.0 / n/a | 96.0 / n/a |" in table


def test_rows_without_scores_stay_out_of_the_table():
    s = summarise(plan(), [seed_result(0, {"stage1": (0.9, 0.3)})], 1)
    table = lab_table(s)
    assert table.splitlines()[0] == "| model | language | vision |"
    assert "| after stage 1 | 90.0 | 30.0 |" in table and "vision only" not in table and "merge" not in table


def test_lab_json_keeps_its_shape():
    data = summarise(plan(), [seed_result(0, **HELD)], seconds=61.234).to_json()
    assert set(data["summary"]) == {"pretrained_llm", "stage1", *VARIANTS, "merge_0.5", "merge_1"}
    assert data["summary"]["merge_0.5"]["language"] == {"mean": 0.92, "min": 0.92, "max": 0.92, "n": 1}
    assert data["summary"]["pretrained_llm"]["vision"] is None
    seed = data["seeds"]["0"]
    assert set(seed["merge"]) == {"0.5", "1"} and seed["merge"]["0.5"]["language"] == 0.92
    assert seed["scores"]["stage1"] == {"tasks": {"lab_language/add": 0.95}, "language": 0.95, "vision": 0.3}
    assert data["seconds"] == 61.2 and data["plan"]["alphas"] == [0.5, 1.0]
    assert data["effects"]["E3"]["alpha"] == 0.5 and data["effects"]["margin"] == 0.05
    assert data["effects"]["E2"]["language_only"] == {"language": 0.94, "vision": 0.3}
    # the same keys, level by level, as the lab.json the docs show
    docs = json.loads((Path(__file__).parents[1] / "docs" / "lab" / "lab.json").read_text())
    assert set(data) == set(docs) and set(seed) == set(docs["seeds"]["0"]) and set(data["plan"]) == set(docs["plan"])
    assert set(seed["scores"]["stage1"]) == set(docs["seeds"]["0"]["scores"]["stage1"])
    assert set(data["summary"]["stage1"]["language"]) == set(docs["summary"]["stage1"]["language"])
    for k in ("E1", "E2", "E3"):
        assert set(data["effects"][k]) == set(docs["effects"][k])


def test_write_report_writes_the_files(tmp_path):
    report = write_report(tmp_path, summarise(plan(), [seed_result(0, **HELD)], seconds=60))
    assert json.loads((tmp_path / "lab.json").read_text()) == json.loads(json.dumps(report.data))
    md = (tmp_path / "lab.md").read_text()
    assert md.startswith("# mlan lab") and report.table in md and report.reading in md
    assert "| world | 1.0 |" in md and "| **seed total** | 3.5 |" in md
    assert (tmp_path / "lab.png").stat().st_size > 1000
    assert report.files == {k: str(tmp_path / f"lab.{k}") for k in ("json", "md", "png")}
