"""Opening hub datasets (no network: `datasets.load_dataset` is replaced): the `revision` of a mixture
source, a contamination set or a suite task reaches it, and a repo that is only a loading script
(which datasets >= 4 refuses) is one line naming the alternative."""

from __future__ import annotations

import pytest

from mlan.errors import MlanError
from mlan.hub import SCRIPT_REPO_MESSAGE


@pytest.fixture(scope="module")
def script_error(tmp_path_factory) -> RuntimeError:
    """The error the installed `datasets` raises for a loading-script repo: a folder holding
    `<name>/<name>.py` takes the same branch of `dataset_module_factory` as a hub repo with one."""
    import datasets

    repo = tmp_path_factory.mktemp("hub") / "cosmos_qa"
    repo.mkdir()
    (repo / "cosmos_qa.py").write_text("raise SystemExit('a loading script is never run')\n")
    with pytest.raises(RuntimeError) as e:
        datasets.load_dataset(str(repo), split="train")
    assert SCRIPT_REPO_MESSAGE in str(e.value)  # mlan matches on this text
    return e.value


@pytest.fixture
def fake_hub(monkeypatch):
    """Replaces the hub: `calls` records each load_dataset call; `fail` makes them raise."""
    import datasets

    # Modules that bind `require_hub` by name at import must import the real one, not the stand-in below,
    # or every later test in this process would find no hub check at all.
    import mlan.evaluate.run
    import mlan.train.preflight

    state = {"calls": [], "fail": None}

    def fake_load(path, name=None, split=None, revision=None, **kwargs):
        state["calls"].append({"path": path, "name": name, "split": split, "revision": revision, **kwargs})
        if state["fail"] is not None:
            raise state["fail"]
        return datasets.Dataset.from_list([{"id": "1", "imageId": "i1", "image": None}])

    monkeypatch.setattr(mlan.hub, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(mlan.hub, "require_hub", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    return state


def _shipped_mixture(name: str):
    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.paths import shipped_dir

    return load_config(shipped_dir("data_mixtures") / f"{name}.yaml", MixtureSpec)


def test_source_and_contamination_revisions_reach_load_dataset(fake_hub):
    from mlan.data.sources import open_dataset

    spec = _shipped_mixture("mlan")
    src = next(s for s in spec.sources if s.name == "cosmos_qa")
    open_dataset(src.dataset, config=src.config, split=src.split, revision=src.revision, what="source")
    ev = spec.contamination.evals[0].model_copy(update={"revision": "abc123"})
    open_dataset(ev.dataset, config=ev.config, split=ev.split, revision=ev.revision, what="eval")
    assert [(c["path"], c["split"], c["revision"]) for c in fake_hub["calls"]] == [
        ("allenai/cosmos_qa", "train", "refs/convert/parquet"),
        ("google/boolq", "validation", "abc123"),
    ]


def test_suite_task_revisions_reach_load_dataset_and_its_keys(fake_hub):
    from mlan.config.suite import SuiteTask
    from mlan.evaluate.tasks import data_fingerprint, load_task_data

    task = SuiteTask.model_validate(
        {
            "name": "gqa",
            "metric": "acc",
            "hub": {
                "path": "lmms-lab/GQA", "name": "testdev_balanced_instructions", "split": "testdev", "revision": "r1",
                "images": {"path": "lmms-lab/GQA", "name": "testdev_balanced_images", "split": "testdev", "revision": "r2"},
            },
        }
    )  # fmt: skip
    data = load_task_data(task)
    assert [(c["name"], c["revision"]) for c in fake_hub["calls"]] == [
        ("testdev_balanced_instructions", "r1"),
        ("testdev_balanced_images", "r2"),
    ]
    assert data.source == "hub:lmms-lab/GQA/testdev_balanced_instructions[testdev]@r1"
    assert data_fingerprint(task).endswith(":testdev@r1")
    unpinned = task.model_copy(update={"hub": task.hub.model_copy(update={"revision": None})})
    assert data_fingerprint(unpinned) == "hub:lmms-lab/GQA:testdev_balanced_instructions:testdev"  # keys kept


def test_lm_eval_task_gets_the_revision_as_dataset_kwargs(tmp_path):
    from mlan.config.suite import SuiteTask
    from mlan.evaluate.harness import task_yaml

    hub = {"path": "Rowan/hellaswag", "split": "validation"}
    task = SuiteTask.model_validate({"name": "hellaswag", "metric": "acc_norm", "hub": hub})
    cfg, source = task_yaml(task, None, None, tmp_path)
    assert "dataset_kwargs" not in cfg and source == "hub:Rowan/hellaswag"
    pinned = SuiteTask.model_validate({"name": "hellaswag", "metric": "acc_norm", "hub": {**hub, "revision": "r1"}})
    cfg, source = task_yaml(pinned, None, None, tmp_path)
    assert cfg["dataset_kwargs"] == {"revision": "r1"} and source == "hub:Rowan/hellaswag@r1"


@pytest.mark.parametrize(
    ("repo", "alternative"),
    [
        ("allenai/cosmos_qa", "use its parquet conversion (revision: refs/convert/parquet"),
        ("HuggingFaceM4/VQAv2", "use Multimodal-Fatima/VQAv2_train"),
        ("someone/old_script", "use its parquet conversion (revision: refs/convert/parquet) if the hub made one"),
    ],
)
def test_script_repo_is_one_line_with_the_alternative(fake_hub, script_error, repo, alternative):
    from mlan.config.suite import SuiteTask
    from mlan.data.sources import open_dataset
    from mlan.evaluate.tasks import load_task_data

    fake_hub["fail"] = script_error
    with pytest.raises(MlanError) as mixture:
        open_dataset(repo, config=None, split="train", revision=None, what="source 'x'")
    task = SuiteTask.model_validate(
        {"name": "x", "format": "qa", "metric": "acc", "hub": {"path": repo, "split": "test"}}
    )
    with pytest.raises(MlanError) as suite:
        load_task_data(task)
    for e, what in ((mixture.value, "source 'x'"), (suite.value, "dataset of task 'x'")):
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"{what}: hub dataset {repo!r} is a loading-script repo")
        assert "datasets >= 4 cannot run" in msg and alternative in msg and msg.endswith("or a local copy")


def test_other_hub_failures_stay_one_line(fake_hub):
    from mlan.config.suite import SuiteTask
    from mlan.evaluate.tasks import load_task_data

    fake_hub["fail"] = ValueError("Unknown split \"dev\". Should be one of ['test'].\nmore detail")
    task = SuiteTask.model_validate(
        {"name": "x", "format": "qa", "metric": "acc", "hub": {"path": "a/b", "split": "dev"}}
    )
    with pytest.raises(
        MlanError,
        match=r"^dataset of task 'x': cannot load hub dataset 'a/b' \(config None, split dev\): Unknown split",
    ) as e:
        load_task_data(task)
    assert "\n" not in str(e.value)


def test_build_mixture_reports_a_script_repo_in_one_line(cli, one_line_error, fake_hub, script_error, tmp_path):
    import yaml

    fake_hub["fail"] = script_error
    spec = tmp_path / "spec.yaml"
    source = {"name": "cosmos_qa", "dataset": "allenai/cosmos_qa", "adapter": "cosmos_qa", "count": 5}
    spec.write_text(yaml.safe_dump({"name": "s", "sources": [source]}))
    line = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "out"), stdout_ok=True)
    assert line.startswith(
        "error: source 'cosmos_qa' (allenai/cosmos_qa): hub dataset 'allenai/cosmos_qa' is a loading-script repo"
    )
    assert "revision: refs/convert/parquet" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        ("script", "error: dataset of task 'x': hub dataset 'allenai/cosmos_qa' is a loading-script repo"),
        (ValueError('Unknown split "dev".\nmore detail'), "error: dataset of task 'x': cannot load hub dataset"),
    ],
    ids=["script repo", "other failure"],
)
def test_eval_reports_a_hub_failure_in_one_line(cli, one_line_error, fake_hub, script_error, tiny_llava_dir, tmp_path, fail, expected):  # fmt: skip
    """The suite side of the two tests above, through `mlan eval` as a user runs it."""
    import yaml

    fake_hub["fail"] = script_error if fail == "script" else fail
    task = {"name": "x", "format": "qa", "metric": "acc", "hub": {"path": "allenai/cosmos_qa", "split": "dev"}}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "engine": "generate", "modality": "language", "tasks": [task]}))
    r = cli("eval", tiny_llava_dir, "--suite", suite, "--out", tmp_path / "ev")
    line = one_line_error(r, stdout_ok=True)
    assert line.startswith(expected), line
    # mlan's "loading ..." at most before it (a long path wraps it: its indented continuation is the same message)
    assert len([x for x in r.stderr.splitlines() if x.strip() and not x[0].isspace()]) <= 2, r.stderr
