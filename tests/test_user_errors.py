"""Every bad input a user can reach, as the console shows it: the real command, exit code 2, one `error: ...`
line naming the file, field or row, and nothing else worth a line on stderr (no library log, no traceback).

The library-level tests (`pytest.raises(MlanError, ...)` in test_foundation, test_schemas, test_sampler,
test_merge_sweep, test_model_kinds, test_wings, test_wings_published, test_console, test_checkpoint and
test_hub_runs) pin each message's text; the cases here run the same mistakes through `mlan` itself. Most run
in process (CliRunner); the ones most likely to be preceded by a library's own log (opening a model folder, a
dataset file or folder) also run as `python -m mlan` in its own process, where whatever a library prints by any
route reaches the captured stderr as it would a terminal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = (REPO / "recipes" / "tiny.yaml").read_text()


def _lines(stderr: str) -> list[str]:
    """What was said on stderr, one entry per message: rich wraps a long log line at the console's width
    (80 columns off a terminal) and indents its continuation, which belongs to the line above."""
    return [x for x in stderr.splitlines() if x.strip() and not x[0].isspace()]


def _as_a_user_sees_it(result) -> str:
    """Exit code 2, at most two non-empty lines on stderr (mlan's own "loading ..." line may come first),
    the last the error; no traceback, no library log line. Returns the error line."""
    assert result.exit_code == 2, result.output
    lines = _lines(result.stderr)
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.output, result.output
    assert all(re.match(r"INFO\s+loading ", x) for x in lines[:-1]), result.stderr
    return lines[-1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _spec(tmp: Path, *sources: dict, name: str | None = "m") -> Path:
    import yaml

    data = {"sources": list(sources)}
    if name is not None:
        data = {"name": name, **data}
    return _write(tmp / "spec.yaml", yaml.safe_dump(data))


def _source(dataset, **more) -> dict:
    return {"name": "a", "dataset": str(dataset), "adapter": "squad", "count": 1, **more}


def _not_a_dataset(tmp: Path) -> Path:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("x")
    return tmp / "notes"


# --------------------------------------------------------------------------- config files and overrides

# case -> (tmp_path, tiny model folder -> the command's arguments, what the error line says)
CONFIG_ERRORS = {
    # test_foundation: the config loader's messages, through the commands that read each kind of file.
    "unknown field in a list item": (
        lambda t, m: ["build-mixture", _spec(t, _source("x.jsonl"), _source("x.jsonl", wieght=2)), "--out", t / "o"],
        "spec.yaml: sources.1.wieght: unknown field (did you mean 'weight'?)",
    ),
    "value out of range": (
        lambda t, m: ["sft", _write(t / "r.yaml", RECIPE.replace("warmup_ratio: 0.03", "warmup_ratio: 2"))],
        "r.yaml: training.warmup_ratio: input should be less than 1 (got 2)",
    ),
    "wrong type in an override": (
        lambda t, m: ["sft", "tiny", "-o", "training.learning_rate=fast"],
        "tiny.yaml: training.learning_rate: input should be a valid number",
    ),
    "required field missing": (
        lambda t, m: ["build-mixture", _spec(t, _source("x.jsonl"), name=None), "--out", t / "o"],
        "spec.yaml: name: required field is missing",
    ),
    "file not found": (lambda t, m: ["sft", t / "nope.yaml"], "nope.yaml: file not found (shipped recipes: "),
    "shipped name not found": (
        lambda t, m: ["sft", "recipes/nope.yaml"],
        "recipes/nope.yaml: file not found (shipped recipes: ",
    ),
    "invalid YAML": (
        lambda t, m: ["sft", _write(t / "r.yaml", "name: x\ntraining: {a: [1, 2}\n")],
        "r.yaml: line 2, column 20: invalid YAML",
    ),
    "a list at the top level": (
        lambda t, m: ["eval", m, "--suite", _write(t / "s.yaml", "- 1\n- 2\n")],
        "s.yaml: expected a mapping of fields at the top level, got list",
    ),
    "override without a value": (
        lambda t, m: ["sft", "tiny", "-o", "training.learning_rate"],
        "override 'training.learning_rate': expected FIELD.PATH=VALUE",
    ),
    "override of no list item": (
        lambda t, m: ["build-mixture", "quickstart", "-o", "sources.99.count=1", "--out", t / "o"],
        "sources.99: no such list item",
    ),
    "override of an unknown field": (
        lambda t, m: ["sft", "tiny", "-o", "train.zzz=1"],
        "train.zzz: unknown field (valid: language_model, projector, vision_tower, lora) (from -o train.zzz=1)",
    ),
    "unknown field in a suite": (
        lambda t, m: [
            "eval",
            m,
            "--suite",
            _write(
                t / "s.yaml",
                "name: x\nengine: generate\nmodality: language\ntasks:\n  - {name: boolq, metric: acc, hub: {path: a, split: b}, extractoin: x}\n",
            ),
        ],
        "s.yaml: tasks.0.extractoin: unknown field (did you mean 'extraction'?)",
    ),
    # test_sampler: the older name and the new one disagree.
    "batch order and its older name": (
        lambda t, m: [
            "sft",
            _write(
                t / "r.yaml",
                RECIPE.replace("  seed: 42", "  seed: 42\n  group_by_modality_length: true\n  batch_order: wide"),
            ),
        ],
        "r.yaml: training: value error, group_by_modality_length: true means batch_order llava, but batch_order is wide",
    ),
    # test_merge_sweep: a merge YAML's field.
    "merge yaml alpha": (
        lambda t, m: [
            "merge",
            _write(t / "merge.yaml", f"multimodal: {m}\noriginal: {m}\nalpha: 2\n"),
            "--out",
            t / "o",
        ],
        "merge.yaml: alpha: value error, alpha must be in [0, 1], got 2.0",
    ),
    # test_wings: the recipe's wings section.
    "wings negative layer": (
        lambda t, m: ["sft", "wings_tiny", "-o", "wings.layers=[-1]"],
        "wings_tiny.yaml: wings.layers: value error, layer indices are 0-based and non-negative (got -1)",
    ),
    "wings repeated layer": (
        lambda t, m: ["sft", "wings_tiny", "-o", "wings.layers=[1,1]"],
        "wings_tiny.yaml: wings.layers: value error, layer indices must be unique",
    ),
    "wings router": (
        lambda t, m: ["sft", "wings_tiny", "-o", "wings.router=mlp"],
        "wings_tiny.yaml: wings.router: input should be 'attention' or 'modality'",
    ),
    "wings misspelt field": (
        lambda t, m: ["sft", "wings_tiny", "-o", "wings.rnak=8"],
        "wings_tiny.yaml: wings.rnak: unknown field (did you mean 'rank'?)",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_as_a_user_sees_them(cli, tiny_llava_dir, tmp_path, case):
    make, message = CONFIG_ERRORS[case]
    line = _as_a_user_sees_it(cli(*make(tmp_path, tiny_llava_dir)))
    assert message in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- models and data files

# case -> (tmp_path, tiny model folder -> the command's arguments, what the error line says)
FILE_ERRORS = {
    # test_model_kinds: a model given as something that is not a folder.
    "model is a file": (
        lambda t, m: ["eval", _write(t / "model.txt", "x"), "--suite", "quickstart"],
        "model.txt: expected a model folder, got a file",
    ),
    "multimodal is a file": (
        lambda t, m: ["merge", "--multimodal", _write(t / "model.txt", "x"), "--original", m, "--out", t / "o"],
        "model.txt: expected a model folder, got a file",
    ),
    # test_hub_runs: a hub id while offline (the tests run with HF_HUB_OFFLINE=1).
    "hub model offline (eval)": (
        lambda t, m: ["eval", "org/some-model", "--suite", "quickstart"],
        "model 'org/some-model' is not a local path and the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set)",
    ),
    "hub model offline (sft)": (
        lambda t, m: ["sft", "tiny", "-o", "model.path=org/some-model"],
        "model.path 'org/some-model' is not a local path and the Hugging Face Hub is unreachable",
    ),
    # test_schemas: a source file mlan cannot read.
    "source of another format": (
        lambda t, m: ["build-mixture", _spec(t, _source(_write(t / "r.csv", "a,b\n1,2\n"))), "--out", t / "o"],
        "r.csv: expected a .jsonl, .json or .parquet file or a save_to_disk folder",
    ),
    "source folder not a dataset": (
        lambda t, m: ["build-mixture", _spec(t, _source(_not_a_dataset(t))), "--out", t / "o"],
        "notes: Directory ",
    ),
    "source not parquet": (
        lambda t, m: ["build-mixture", _spec(t, _source(_write(t / "r.parquet", "not parquet"))), "--out", t / "o"],
        "r.parquet: Parquet magic bytes not found",
    ),
}


@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_file_errors_as_a_user_sees_them(cli, tiny_llava_dir, tmp_path, case):
    make, message = FILE_ERRORS[case]
    line = _as_a_user_sees_it(cli(*make(tmp_path, tiny_llava_dir)))
    assert message in line, line
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- sft: checks before training


@pytest.fixture(scope="module")
def small_mixture(tmp_path_factory, shared_data) -> Path:
    from test_sft import make_mixture

    return make_mixture(tmp_path_factory.mktemp("mix") / "mixture", shared_data, n_language=4, n_vision=2, n_long=0)


def _checkpoints_without_a_record(out: Path) -> None:
    (out.parent / f"{out.name}.checkpoints" / "checkpoint-4").mkdir(parents=True)
    (out.parent / f"{out.name}.checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{}")


def _checkpoints_with_a_broken_record(out: Path) -> None:
    _checkpoints_without_a_record(out)
    (out.parent / f"{out.name}.checkpoints" / "run_record.json").write_text("{oops")


# case -> (setup of the output folder's surroundings, more arguments, what the error line says)
SFT_ERRORS = {
    # test_checkpoint: checkpoints beside the output that nothing says belong to this run.
    "checkpoints without a run record": (
        _checkpoints_without_a_record,
        [],
        r"out\.checkpoints: checkpoints without a run record \(run_record\.json\).*pass --no-resume",
    ),
    "broken run record": (
        _checkpoints_with_a_broken_record,
        [],
        r"out\.checkpoints/run_record\.json: invalid JSON \(.*\); pass --no-resume to discard the checkpoints",
    ),
    # test_packing: a kernel that cannot keep packed rows apart.
    "packing kernel": (
        None,
        ["-o", "model.attn_implementation=paged|sdpa", "-o", "training.packing=in_batch"],
        r"training\.packing in_batch: attention kernel 'paged\|sdpa' cannot keep packed rows apart",
    ),
    # test_console: a tracker that is not installed (wandb, made absent below).
    "tracker not installed": (None, ["-o", "training.report_to=wandb"], r"training\.report_to wandb: not installed"),
    # a mixture folder that is not one
    "mixture not a dataset": (
        None,
        ["-o", "data.mixture={tmp}/notes"],
        r"data\.mixture .*notes: not a saved dataset",
    ),
}


@pytest.mark.parametrize("case", list(SFT_ERRORS))
def test_sft_preflight_errors_as_a_user_sees_them(cli, tiny_llava_dir, small_mixture, tmp_path, monkeypatch, case):
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    setup, extra, message = SFT_ERRORS[case]
    out = tmp_path / "out"
    if setup:
        setup(out)
    _not_a_dataset(tmp_path)
    args = [
        "sft",
        "tiny",
        "-o",
        f"model.path={tiny_llava_dir}",
        "-o",
        "data.spec=",
        "-o",
        f"data.mixture={small_mixture}",
    ]
    args += ["-o", f"output.dir={out}", *(x.format(tmp=tmp_path) for x in extra)]
    line = _as_a_user_sees_it(cli(*args))
    assert re.search(message, line), line
    assert not out.exists()


# --------------------------------------------------------------------------- Wings folders


@pytest.fixture(scope="module")
def wings_dir(tiny_llava_dir, tmp_path_factory) -> Path:
    """A Wings folder (untrained learners on the tiny LLaVA), written as `mlan sft` writes one."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mlan.config.wings import WingsConfig
    from mlan.wings import add_wings, save_wings_model

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = add_wings(model, WingsConfig(rank=8, layers=[1], router="modality"), processor=processor)
    return save_wings_model(model, tmp_path_factory.mktemp("wings") / "wings", processor)


def _broken_wings(wings_dir: Path, tmp: Path, **changes) -> Path:
    folder = shutil.copytree(wings_dir, tmp / "wings")
    meta = json.loads((folder / "wings_config.json").read_text())
    (folder / "wings_config.json").write_text(json.dumps({**meta, **changes}))
    return folder


# test_wings, test_wings_published: a Wings folder's config -> (changes to wings_config.json, the error line)
WINGS_FOLDERS = {
    "rank": ({"config": {"rank": 0}}, "wings_config.json: config: rank: input should be greater than 0"),
    "system prompt": ({"system_prompt": [1, 2]}, "wings_config.json: system_prompt: expected null or"),
}


@pytest.mark.parametrize("command", ["eval", "chat"])
@pytest.mark.parametrize("case", list(WINGS_FOLDERS))
def test_broken_wings_folder_as_a_user_sees_it(cli, wings_dir, tmp_path, case, command):
    changes, message = WINGS_FOLDERS[case]
    folder = _broken_wings(wings_dir, tmp_path, **changes)
    args = (
        ["eval", folder, "--suite", "quickstart", "--limit", "1"] if command == "eval" else ["chat", folder, "-p", "hi"]
    )
    line = _as_a_user_sees_it(cli(*args))
    assert message in line and str(folder) in line, line


# --------------------------------------------------------------------------- in a real console


def _mlan(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)  # a user's shell does not set it
    cmd = [sys.executable, "-m", "mlan", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _no_weights(model: Path, tmp: Path) -> Path:
    folder = shutil.copytree(model, tmp / "no-weights")
    (folder / "model.safetensors").unlink()
    return folder


def _no_processor(model: Path, tmp: Path) -> Path:
    folder = shutil.copytree(model, tmp / "no-proc")
    for f in ("preprocessor_config.json", "processor_config.json"):
        (folder / f).unlink(missing_ok=True)
    return folder


# case -> (tmp_path, tiny model, Wings folder -> arguments, the error line as a regex)
IN_A_CONSOLE = {
    "model without weights": (
        lambda t, m, w: ["eval", _no_weights(m, t), "--suite", "quickstart"],
        r"error: .*no-weights: no model weights .*",
    ),
    "model without a processor": (
        lambda t, m, w: ["eval", _no_processor(m, t), "--suite", "quickstart"],
        r"error: .*no-proc.*without an image processor.*",
    ),
    "broken Wings folder": (
        lambda t, m, w: ["eval", _broken_wings(w, t, system_prompt=[1, 2]), "--suite", "quickstart"],
        r"error: .*wings/wings_config\.json: system_prompt: expected null or .*",
    ),
    "source folder not a dataset": (
        lambda t, m, w: ["build-mixture", _spec(t, _source(_not_a_dataset(t))), "--out", t / "o"],
        r"error: source 'a' \(.*notes\): cannot read .*notes: .*",
    ),
    "source not parquet": (
        lambda t, m, w: ["build-mixture", _spec(t, _source(_write(t / "r.parquet", "x"))), "--out", t / "o"],
        r"error: source 'a' \(.*r\.parquet\): cannot read .*r\.parquet: .*",
    ),
    "mixture not a dataset": (
        lambda t, m, w: [
            "sft",
            "tiny",
            "-o",
            f"model.path={m}",
            "-o",
            "data.spec=",
            "-o",
            f"data.mixture={_not_a_dataset(t)}",
        ],
        r"error: data\.mixture .*notes: not a saved dataset .*",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(IN_A_CONSOLE))
def test_in_a_real_console(tiny_llava_dir, wings_dir, tmp_path, case):
    """`python -m mlan` in its own process: exactly one line on stderr, whatever the libraries print by
    their own routes (handlers of their own, warnings, stderr itself), and nothing on stdout."""
    make, pattern = IN_A_CONSOLE[case]
    p = _mlan(*make(tmp_path, tiny_llava_dir, wings_dir), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = _lines(p.stderr)
    assert len(lines) <= 2 and all(re.match(r"INFO\s+loading ", x) for x in lines[:-1]), p.stderr
    assert re.fullmatch(pattern, lines[-1]), lines[-1]
    assert not p.stdout.strip(), p.stdout
    assert not (tmp_path / "o").exists()
