"""`mlan lab`: a reduced lab runs every stage through mlan's own library functions and writes the
report; the reading follows the numbers; bad input fails with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlan.lab.plan import LabPlan
from mlan.lab.run import run_lab

# A lab shrunk to seconds: a few steps per stage, small test sets, two merge points; pretraining and
# stage 1 on two threads without a data worker, then the stage-2 variants in two processes.
TINY = dict(
    seeds=[3],
    variants=["vision_only", "language_only", "mlan_v12", "wings_vision_only"],
    alphas=[0.5, 1.0],
    n_train=400,
    n_test=12,
    n_images=160,
    pretrain_steps=3,
    stage1_steps=3,
    stage2_steps=3,
    pretrain_rows=160,
    stage1_rows=80,
    stage2_rows=96,
    batch_size=16,
    jobs=2,
    solo_threads=2,
)


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "lab"
    return run_lab(out, LabPlan(**TINY))


def test_reduced_lab_goes_through_every_stage(tiny_lab):
    out = tiny_lab.out
    seed = out / "seed3"
    data = json.loads((out / "lab.json").read_text())
    assert (out / "lab.md").read_text().startswith("# mlan lab") and (out / "lab.png").stat().st_size > 1000
    assert (out / "lab_tokens.png").stat().st_size > 1000

    # mixtures: built by build_mixture (manifest), the stage-2 ones all the same size, split as asked
    sizes = {}
    for name in ("lab_pretrain", "lab_captions", "lab_vision_only", "lab_language_only", "lab_mlan_v12"):
        m = json.loads((seed / "mixtures" / name / "manifest.json").read_text())
        sizes[name] = (m["modalities"]["language"]["examples"], m["modalities"]["vision"]["examples"])
        assert m["seed"] == 3 and str(seed / "world") in json.dumps(m["sources"])
    assert sizes["lab_vision_only"] == (0, 96) and sizes["lab_language_only"] == (96, 0)
    assert sizes["lab_mlan_v12"] == (84, 12) and sizes["lab_captions"] == (0, 80)
    # the `plain` adapter keeps the world's phrasing verbatim (no instruction template)
    from datasets import load_from_disk

    world = {}
    for f in (seed / "world").glob("*/train.jsonl"):
        world.update({r["question"]: r["answer"] for r in map(json.loads, f.read_text().splitlines())})
    rows = load_from_disk(str(seed / "mixtures" / "lab_mlan_v12"))["train"]
    for row in rows:
        user, assistant = row["messages"]
        assert (len(row["images"]) == 1) == (row["modality"] == "vision")
        if row["modality"] == "language":  # scene questions repeat across images: check the text rows
            assert world[user["content"]] == assistant["content"]
        else:
            assert user["content"] in world and "<image>" not in user["content"]

    # training: run_sft wrote each model with its results and the mixture manifest it saw
    trained = {}
    costs = data["seeds"]["3"]["costs"]
    for name in ("pretrain", "stage1", "vision_only", "language_only", "mlan_v12", "wings_vision_only"):
        r = json.loads((seed / "models" / name / "train_results.json").read_text())
        assert r["steps"] == 3 and (seed / "models" / name / "mixture_manifest.json").is_file()
        trained[name] = r["parameters"]
        # what the training cost: the manifest's tokens times the passes over the mixture (3 x 16 rows seen)
        m = json.loads((seed / "models" / name / "mixture_manifest.json").read_text())["modalities"]
        rows = m["language"]["examples"] + m["vision"]["examples"]
        cost = costs["pretrained_llm" if name == "pretrain" else name]
        assert cost["rows_seen"] == 48 and cost["steps"] == 3 and cost["seconds"] > 0
        assert cost["image_tokens"] == round(m["vision"]["image_tokens"] * 48 / rows)
        assert cost["text_tokens"] == round((m["language"]["text_tokens"] + m["vision"]["text_tokens"]) * 48 / rows)
    assert costs["language_only"]["image_tokens"] == 0 < costs["vision_only"]["image_tokens"]
    assert costs["vision_only"]["image_tokens"] == 48 * 16  # one image of 16 tokens per row
    # Wings: the vision-only run through `mlan sft` with a `wings:` section wrote a Wings folder
    from mlan.wings import is_wings_dir

    assert is_wings_dir(seed / "models" / "wings_vision_only") and not is_wings_dir(seed / "models" / "vision_only")
    assert trained["pretrain"]["vision_tower"]["trainable"] == trained["pretrain"]["projector"]["trainable"] == 0
    assert trained["stage1"]["language_model"]["trainable"] == 0 and trained["stage1"]["vision_tower"]["trainable"]
    assert trained["vision_only"]["vision_tower"]["trainable"] == 0 and trained["vision_only"]["projector"]["trainable"]
    assert (seed / "models" / "pretrained_llm" / "config.json").is_file()  # extracted text-only LLM

    # evaluation: run_evaluation results per model; the text-only LLM has no vision score
    for name in ("pretrained_llm", "stage1", "vision_only", "language_only", "mlan_v12", "wings_vision_only"):
        res = json.loads((seed / "eval" / name / "results.json").read_text())["results"]
        tasks = {(r["suite"], r["task"]): r["n"] for r in res}
        assert tasks[("lab_language", "add")] == 12
        assert (("lab_vision", "scenes") in tasks) == (name != "pretrained_llm")

    # merging: sweep_merge kept each merged model with its manifest and evaluated it
    sweep = json.loads((seed / "merge" / "sweep.json").read_text())
    assert [p["alpha"] for p in sweep["points"]] == [0.5, 1.0]
    for a in ("0.5", "1"):
        mm = json.loads((seed / "merge" / "models" / f"a{a}-d1" / "merge_manifest.json").read_text())
        assert mm["alpha"] == float(a)

    # every resolved config was written and validates on its own
    from mlan.config.base import load_config
    from mlan.config.recipe import SFTRecipe

    recipe = load_config(seed / "configs" / "recipe_vision_only.yaml", SFTRecipe)
    assert recipe.data.mixture == str(seed / "mixtures" / "lab_vision_only") and recipe.training.max_steps == 3
    assert recipe.training.dataloader_num_workers == 1  # a variant shares the machine: one data worker
    stage1 = load_config(seed / "configs" / "recipe_stage1.yaml", SFTRecipe)
    assert stage1.training.dataloader_num_workers == 0 and not stage1.training.extra  # the stage ran alone
    wings = load_config(seed / "configs" / "recipe_wings_vision_only.yaml", SFTRecipe)
    assert wings.wings and wings.wings.stage == 2 and wings.data.mixture == recipe.data.mixture

    # the report: every score per seed / variant / alpha, a summary row per model, a reading
    assert set(data["seeds"]["3"]["scores"]) == {"pretrained_llm", "stage1", *TINY["variants"]}
    assert set(data["seeds"]["3"]["merge"]) == {"0.5", "1"}
    assert data["summary"]["merge_0.5"]["language"]["n"] == 1
    assert set(data["effects"]) == {"margin", "E1", "E2", "E3", "E4", "E5", "E6"}
    # the variants ran in worker processes: their timings came back, in the plan's order
    timings = list(tiny_lab.summary.seeds[0].timings)
    assert [t for t in timings if t in TINY["variants"]] == TINY["variants"]
    for key in ("world", "pretrain", "stage1", "vision_only", "merge sweep"):
        assert key in timings
    for effect in ("E1", "E2", "E3", "E4", "E5", "E6"):
        assert effect in tiny_lab.reading
    assert "| after stage 1 |" in tiny_lab.table and "training tokens (text + image)" in tiny_lab.table
    assert tiny_lab.data["plan"]["variants"] == TINY["variants"]


def test_same_seed_same_world_and_mixtures(tiny_lab, tmp_path):
    from mlan.lab.run import run_seed

    plan = LabPlan(**{**TINY, "alphas": [], "variants": []})
    again = run_seed(tmp_path / "seed3", 3, plan)
    assert [s.name for s in again.scores] == ["pretrained_llm", "stage1"] and again.merges == []
    first = json.loads((tiny_lab.out / "seed3" / "mixtures" / "lab_pretrain" / "manifest.json").read_text())
    second = json.loads((tmp_path / "seed3" / "mixtures" / "lab_pretrain" / "manifest.json").read_text())
    assert first["content_hash"] == second["content_hash"]
    assert again.score("stage1") == tiny_lab.summary.seeds[0].score("stage1")
    assert again.score("stage1").to_json() == tiny_lab.data["seeds"]["3"]["scores"]["stage1"]


def test_lab_bad_input(cli, one_line_error, tmp_path):
    msg = one_line_error(cli("lab", "--seeds", "0,x", "--out", tmp_path / "a"))
    assert "--seeds '0,x': expected a comma-separated list of integers, e.g. 0,1,2" in msg
    assert "a seed appears twice" in one_line_error(cli("lab", "--quick", "--seeds", "1,1", "--out", tmp_path / "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    assert "--overwrite" in one_line_error(cli("lab", "--quick", "--out", tmp_path / "c"))
    assert not (tmp_path / "b").exists()


def test_shipped_lab_configs_are_placeholders_that_validate():
    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.lab.plan import VARIANTS, WORLD_PLACEHOLDER
    from mlan.paths import shipped_dir

    sizes = set()
    for name in {v.mixture for v in VARIANTS.values()}:
        spec = load_config(shipped_dir("data_mixtures") / f"{name}.yaml", MixtureSpec)
        sizes.add(spec.modality_split.language + spec.modality_split.vision)
        assert all(s.dataset.startswith(WORLD_PLACEHOLDER) and s.adapter == "plain" for s in spec.sources)
    assert sizes == {2400}  # every stage-2 variant trains on the same number of examples
    assert Path(shipped_dir("recipes") / "lab_stage2.yaml").is_file()


def _worker_levels() -> dict[str, int | str]:
    import logging
    import multiprocessing as mp

    levels: dict[str, int | str] = {
        n: logging.getLogger(n).getEffectiveLevel() for n in ("bitsandbytes.backends.cpu.ops", "mlan", "mlan.lab")
    }
    return levels | {"start method": mp.get_start_method()}


def test_seed_workers_get_the_parent_console_set_up():
    """Seeds run in spawned processes: each repeats the CLI's console set-up (library noise such as
    bitsandbytes' missing-`kernels` line filtered), keeps the parent's mlan log levels, and forks
    its data-loader workers (a spawned process would spawn them)."""
    import logging
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from mlan import console
    from mlan.lab.processes import worker_init

    args = (console.NORMAL, {"mlan": logging.WARNING, "mlan.lab": logging.INFO}, 1)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=worker_init, initargs=args) as pool:
        levels = pool.submit(_worker_levels).result()
    assert levels == {
        "bitsandbytes.backends.cpu.ops": logging.ERROR, "mlan": logging.WARNING, "mlan.lab": logging.INFO,
        "start method": "fork",  # its data-loader workers inherit all this instead of importing afresh
    }  # fmt: skip
