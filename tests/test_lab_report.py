"""The lab's report from typed per-seed results, no training: statistics over seeds, the effects
computed from the numbers (held / did not hold), the table, lab.json's shape and the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlan.lab.plan import LabPlan
from mlan.lab.reading import E1, Effects, Stat, read_effects
from mlan.lab.report import lab_table, reading_text, summarise, write_report
from mlan.lab.results import MergePoint, SeedResult, TrainCost, VariantScore

VARIANTS = ["vision_only", "language_only", "mlan_v12"]
# Stage-2 costs (text tokens, image tokens, seconds) as the lab's mixtures give them: image rows carry 16
# image tokens each, so vision-only costs the most.
COSTS = {
    "vision_only": (150_000, 300_000, 100.0),
    "language_only": (200_000, 0, 50.0),
    "mlan_v12": (190_000, 40_000, 80.0),
}


def seed_result(
    seed: int, models: dict[str, tuple], merges: dict[float, tuple] | None = None, costs=None, chance=None
) -> SeedResult:
    """A seed's results from (language, vision) per model and per merge alpha, and (text, image, s) per run."""
    scores = [VariantScore(name, lang, vis, {"lab_language/add": lang or 0.0}) for name, (lang, vis) in models.items()]
    points = [MergePoint(a, lang, vis) for a, (lang, vis) in (merges or {}).items()]
    spent = {
        k: TrainCost(300, 19200, t, i, s) for k, (t, i, s) in (COSTS if costs is None else costs).items() if k in models
    }
    timings = {"world": 1.0, "pretrain": 2.5}
    return SeedResult(seed, scores, points, timings=timings, seconds=3.5, costs=spent, vision_chance=chance)


def plan(seeds=(0,), alphas=(0.5, 1.0)) -> LabPlan:
    return LabPlan(seeds=list(seeds), variants=list(VARIANTS), alphas=list(alphas))


HELD = dict(
    models={
        "pretrained_llm": (0.96, None),
        "stage1": (0.95, 0.3),
        "vision_only": (0.6, 1.0),
        "language_only": (0.94, 0.6),
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
    assert "language-only scored 94.0 / 60.0" in s.reading and "Wall time 1.0 min." in s.reading
    # E4: language-only lifted vision over stage 1 by 30 points; E5: the 12.5% run reached vision-only's vision
    # with 230k tokens against 450k
    assert e.e4 and e.e4.shown and e.e4.lift == pytest.approx(0.3)
    assert (
        "E4 held: language-only tuning, with no image in its stage-2 data, lifted vision 30.0 -> 60.0 (+30.0)"
        in s.reading
    )
    assert e.e5 and e.e5.shown and e.e5.tokens == 230_000 and e.e5.token_ratio == pytest.approx(450 / 230)
    assert "E5 held: the 12.5% vision (MLAN_v) run reached 99.0 vision with 230k stage-2 tokens" in s.reading
    assert "training took 80 s against 100 s" in s.reading and "Not measured in this run: E6." in s.reading


def test_effects_did_not_hold_when_the_numbers_fail():
    s = summarise(plan(), [seed_result(0, **NOT_HELD)], seconds=60)
    e = s.effects
    assert e.e1 and not e.e1.shown and e.e2 and not e.e2.shown and e.e3 and not e.e3.shown
    assert not e.e2.keeps_language and not e.e2.matches_vision and not e.e3.meaningful
    text = s.reading
    assert "E1 did not hold" in text and "E2 did not hold" in text and "E3 did not hold" in text
    assert "language fell" in text and "vision stayed below" in text and "little language to recover" in text
    assert "held" not in text
    assert "language-only" not in text  # not run: no language-only sentence


WINGS = [*VARIANTS, "wings_vision_only"]


@pytest.mark.parametrize(
    ("language_only", "mlan_v12", "wings", "verdicts", "why"),
    [
        # every effect holds: language-only reads the images (above guessing), the 12.5% mixture matches
        # vision-only with fewer tokens, Wings keeps 20 more points of language at equal vision
        ((0.93, 0.8), (0.94, 0.99), (0.6, 0.98), {"E4": True, "E5": True, "E6": True}, []),
        # a lift to the guessing level only; the 12.5% mixture short of vision-only; Wings no better
        ((0.93, 0.34), (0.94, 0.85), (0.42, 1.0), {"E4": False, "E5": False, "E6": False},
         ["reading the image did not", "its vision stayed below vision-only's",
          "its language was not above vision-only's by the margin"]),
        # no lift at all; Wings keeps language but loses vision
        ((0.93, 0.02), (0.94, 0.99), (0.9, 0.5), {"E4": False, "E5": True, "E6": False},
         ["did not carry over to questions about images", "its vision was not within the margin"]),
    ],
)  # fmt: skip
def test_e4_to_e6_follow_the_numbers(language_only, mlan_v12, wings, verdicts, why):
    models = {"stage1": (0.95, 0.0), "vision_only": (0.4, 1.0), "language_only": language_only,
              "mlan_v12": mlan_v12, "wings_vision_only": wings}  # fmt: skip
    costs = {**COSTS, "wings_vision_only": (150_000, 300_000, 120.0)}
    s = summarise(LabPlan(seeds=[0], variants=WINGS, alphas=[]), [seed_result(0, models, costs=costs, chance=0.31)], 60)
    e = s.effects
    assert e.e4 and e.e5 and e.e6 and e.e4.chance == 0.31
    assert {"E4": e.e4.shown, "E5": e.e5.shown, "E6": e.e6.shown} == verdicts
    for key, held in verdicts.items():
        assert f"{key} {'held' if held else 'did not hold'}" in s.reading
    for reason in why:
        assert reason in s.reading
    assert "a word of the right kind without reading the image scores 31.0" in s.reading
    assert "vision, base phrasing" not in lab_table(s)  # no probe was run


def test_the_probe_is_quoted_and_tabled_apart_from_vision():
    scores = [
        VariantScore("stage1", 0.95, 0.0, {"lab_vision_base/scenes": 0.99}, probe=0.99),
        VariantScore("language_only", 0.93, 0.1, {"lab_vision_base/scenes": 0.7}, probe=0.7),
    ]
    s = summarise(
        LabPlan(seeds=[0], variants=["language_only"], alphas=[]), [SeedResult(0, scores, vision_chance=0.31)], 60
    )
    assert s.effects.e4 and not s.effects.e4.shown and s.effects.e4.language_only_probe == 0.7
    assert "the same images get 99.0 from the stage-1 model and 70.0 after language-only tuning" in s.reading
    table = lab_table(s).splitlines()
    assert (
        table[0] == "| model | language | vision | vision, base phrasing | training tokens (text + image) | train s |"
    )
    assert "| language only (MLAN) | 93.0 | 10.0 | 70.0 | - | - |" in table
    # from evaluation results: the probe suite stays out of the vision mean
    from mlan.lab.results import PROBE_SUITE

    v = VariantScore.of("x", [("lab_vision", "scenes", "vision", 0.2), (PROBE_SUITE, "scenes", "vision", 0.8)])
    assert v.vision == 0.2 and v.probe == 0.8 and set(v.tasks) == {"lab_vision/scenes", f"{PROBE_SUITE}/scenes"}


def test_each_threshold_is_the_margin():
    # E1: a drop of exactly the margin counts; a rise reads "changed"
    e = read_effects(summarise(plan(), [seed_result(0, {"stage1": (0.9, 0.3), "vision_only": (0.85, 1.0)})], 1).rows)
    assert e.e1 == E1(shown=True, stage1_language=0.9, vision_only_language=0.85, drop=pytest.approx(0.05))
    rows = summarise(plan(), [seed_result(0, {"stage1": (0.5, 0.3), "vision_only": (0.6, 1.0)})], 1).rows
    text = reading_text(read_effects(rows), 1, 1)
    assert "E1 did not hold: vision-only tuning changed language accuracy 50.0 -> 60.0" in text
    # E3: a merge that keeps vision but gains less than the margin does not count
    models = {"stage1": (0.95, 0.3), "vision_only": (0.6, 1.0)}
    s = summarise(plan(), [seed_result(0, models, {0.5: (0.64, 1.0), 1.0: (0.95, 0.3)})], 1)
    assert s.effects.e3 and not s.effects.e3.shown and s.effects.e3.best_language == 0.95


def test_not_measured_effects_are_named():
    s = summarise(LabPlan(seeds=[0], variants=[], alphas=[]), [seed_result(0, {"stage1": (0.9, 0.3)})], 1)
    assert s.effects == Effects() and s.effects.missing == ["E1", "E2", "E3", "E4", "E5", "E6"]
    assert "Not measured in this run: E1, E2, E3, E4, E5, E6." in s.reading


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
    head = "| model | language | vision | training tokens (text + image) | train s | seed 0 (lang / vis) | seed 1 (lang / vis) |"
    assert table[0] == head
    row = "| vision only | 55.0 [50.0-60.0] | 95.0 [90.0-100.0] | 150k + 300k | 100 | 60.0 / 100.0 | 50.0 / 90.0 |"
    assert row in table
    assert "| merge alpha 1 (vision only + LLM) | 95.0 | 30.0 | - | - | 95.0 / 30.0 | n/a / n/a |" in table
    assert "| pretrained LLM (text only) | 96.0 [96.0-96.0] | - | - | - | 96.0 / n/a | 96.0 / n/a |" in table
    assert "| language only (MLAN) | 94.0 [94.0-94.0] | 60.0 [60.0-60.0] | 200k + 0 | 50 |" in lab_table(s)


def test_rows_without_scores_stay_out_of_the_table():
    s = summarise(plan(), [seed_result(0, {"stage1": (0.9, 0.3)})], 1)
    table = lab_table(s)
    assert table.splitlines()[0] == "| model | language | vision | training tokens (text + image) | train s |"
    assert "| after stage 1 | 90.0 | 30.0 | - | - |" in table and "vision only" not in table and "merge" not in table


def test_lab_json_keeps_its_shape():
    data = summarise(plan(), [seed_result(0, **HELD)], seconds=61.234).to_json()
    assert set(data["summary"]) == {"pretrained_llm", "stage1", *VARIANTS, "merge_0.5", "merge_1"}
    assert data["summary"]["merge_0.5"]["language"] == {"mean": 0.92, "min": 0.92, "max": 0.92, "n": 1}
    assert data["summary"]["pretrained_llm"]["vision"] is None
    seed = data["seeds"]["0"]
    assert set(seed["merge"]) == {"0.5", "1"} and seed["merge"]["0.5"]["language"] == 0.92
    assert seed["scores"]["stage1"] == {
        "tasks": {"lab_language/add": 0.95}, "language": 0.95, "vision": 0.3, "probe": None
    }  # fmt: skip
    assert data["seconds"] == 61.2 and data["plan"]["alphas"] == [0.5, 1.0]
    assert data["effects"]["E3"]["alpha"] == 0.5 and data["effects"]["margin"] == 0.05
    assert data["effects"]["E2"]["language_only"] == {"language": 0.94, "vision": 0.6}
    assert seed["costs"]["vision_only"] == {
        "steps": 300, "rows_seen": 19200, "text_tokens": 150_000, "image_tokens": 300_000, "seconds": 100.0
    }  # fmt: skip
    # the same keys, level by level, as the lab.json the docs show
    docs = json.loads((Path(__file__).parents[1] / "docs" / "lab" / "lab.json").read_text())
    assert set(data) == set(docs) and set(seed) == set(docs["seeds"]["0"]) and set(data["plan"]) == set(docs["plan"])
    assert set(seed["scores"]["stage1"]) == set(docs["seeds"]["0"]["scores"]["stage1"])
    assert set(data["summary"]["stage1"]["language"]) == set(docs["summary"]["stage1"]["language"])
    for k in ("E1", "E2", "E3", "E4", "E5"):  # no Wings run here: E6 is not measured
        assert set(data["effects"][k]) == set(docs["effects"][k])
    assert set(docs["effects"]) == {"margin", "E1", "E2", "E3", "E4", "E5", "E6"}


def test_write_report_writes_the_files(tmp_path):
    report = write_report(tmp_path, summarise(plan(), [seed_result(0, **HELD)], seconds=60))
    assert json.loads((tmp_path / "lab.json").read_text()) == json.loads(json.dumps(report.data))
    md = (tmp_path / "lab.md").read_text()
    assert md.startswith("# mlan lab") and report.table in md and report.reading in md
    assert "| world | 1.0 |" in md and "| **seed total** | 3.5 |" in md
    assert (tmp_path / "lab.png").stat().st_size > 1000 and (tmp_path / "lab_tokens.png").stat().st_size > 1000
    assert "![accuracy against training tokens](lab_tokens.png)" in md
    files = {k: str(tmp_path / f"lab.{k}") for k in ("json", "md", "png")}
    assert report.files == files | {"tokens_png": str(tmp_path / "lab_tokens.png")}
