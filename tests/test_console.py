"""What a user sees: a quiet training console, help that reads as paragraphs, the training
progress display, and experiment tracking (`training.report_to`) read back from TensorBoard."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    "build-mixture",
    "assemble",
    "convert",
    "sft",
    "eval",
    "merge",
    "quickstart",
    "lab",
    "tiny-model",
    "validate",
]


def _mlan(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m mlan ...` in its own process: nothing of pytest's warning capture or logging set-up."""
    # The test session turns transformers' advisory warnings off; a user's shell does not.
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS")}
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, "-m", "mlan", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        [],
        [
            "-o",
            "train.language_model=qlora",
            "-o",
            "output.merge_lora=true",
            "-o",
            "training.gradient_checkpointing=true",
        ],
    ],
    ids=["full", "qlora-merged"],
)
def test_sft_console_is_quiet(tiny_llava_dir, tmp_path, options):
    """`mlan sft tiny` (mixture built first) shows mlan's lines, its progress and the summary; no
    library warnings, no printed log dicts, no per-file progress bars. QLoRA brings in peft and
    bitsandbytes, and merging loads the adapter again."""
    args = ["-o", f"model.path={tiny_llava_dir}", "-o", "training.max_steps=4", *options]
    r = _mlan("sft", "tiny", *args, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for noise in (
        "FutureWarning",  # e.g. gradient_checkpointing, deprecated in transformers 5
        "DeprecationWarning",
        "UserWarning",
        "{'loss'",  # the Trainer's printed log dicts
        "'train_runtime'",
        "it/s]",  # tqdm bars: loading weights, writing shards, the Trainer's own
        "examples/s]",  # datasets: generating splits, saving the mixture
        "[transformers]",  # transformers' own handler
        "gemm_4bit_forward",  # bitsandbytes looking for an optional kernel
        "Traceback",
    ):
        assert noise not in out, f"{noise!r} in the console:\n{out}"
    assert re.search(r"step 4/4 +loss \d", out), out  # progress (in lines: the output is not a terminal)
    assert "building mixture" in out and "model written to" in out  # mlan's own INFO lines
    assert "SFT: tiny" in r.stdout and "train loss first / last" in r.stdout


@pytest.mark.slow
def test_verbose_shows_the_libraries(tmp_path):
    """-v shows what the default hides: the libraries' INFO lines and progress bars."""
    quiet = _mlan("tiny-model", "quiet", cwd=tmp_path)
    verbose = _mlan("-v", "tiny-model", "loud", cwd=tmp_path)
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "Configuration saved in" not in quiet.stdout + quiet.stderr
    assert "Writing model shards" not in quiet.stdout + quiet.stderr
    assert "requires torchvision" not in quiet.stdout + quiet.stderr  # the PIL image processor is expected
    assert "Configuration saved in" in verbose.stdout + verbose.stderr  # transformers' INFO
    assert "Writing model shards" in verbose.stdout + verbose.stderr  # its progress bar


# --------------------------------------------------------------------------- help


def _wrapped_lines_fill(lines: list[str], width: int) -> list[str]:
    """Lines that end early: the first word of the next line of the same paragraph would have fit."""
    bad = []
    for a, b in itertools.pairwise(lines):
        if a.strip() and b.strip() and len(a.rstrip()) + 1 + len(b.split()[0]) <= width:
            bad.append(f"{a.rstrip()!r} / {b.strip()!r}")
    return bad


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_as_paragraphs(cli, command):
    """At 80 columns the help text is wrapped by the terminal, not at the docstring's line breaks."""
    args = [command, "--help"] if command else ["--help"]
    r = cli(*args, env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    # The description above the panels: paragraphs one space in; \b blocks (examples) further in.
    top = []
    for line in lines:
        if line.startswith("╭"):
            break
        top.append("" if line.startswith("   ") else line)
    text = [line for line in top if line.strip() and not line.lstrip().startswith("Usage:")]
    assert _wrapped_lines_fill(top, max(len(line.rstrip()) for line in text)) == []
    if command is None:
        # The command list: each command's first paragraph, wrapped in its column.
        panel = lines[next(i for i, line in enumerate(lines) if "─ Commands " in line) + 1 :]
        rows = panel[: next(i for i, line in enumerate(panel) if line.startswith("╰"))]
        start = re.match(r"│ \S+\s+", rows[0]).end()
        cells: list[str] = []
        for row in rows:
            if row[2:start].strip() and cells:
                cells.append("")  # the next command: a new paragraph
            cells.append(row[start:-1].rstrip())
        assert _wrapped_lines_fill(cells, max(len(c) for c in cells)) == []
        assert "\b" not in r.output


def test_prose_joins_paragraph_lines_and_keeps_blocks():
    from mlan.cli import prose

    doc = """First line
    goes on here.

    Second paragraph:
    - one item
    - another item
      continued

    \b
      mlan sft a
      mlan eval b
    """
    assert prose(doc) == (
        "First line goes on here.\n\nSecond paragraph:\n- one item\n- another item continued\n\n  mlan sft a\n  mlan eval b"
    )


# --------------------------------------------------------------------------- progress display


def _simulate_training(callback, steps: int = 4) -> None:
    from transformers import TrainerState

    state = TrainerState(max_steps=steps, global_step=0)
    callback.on_train_begin(None, state, None)
    for step in range(1, steps + 1):
        state.global_step = step
        callback.on_step_end(None, state, None)
        if step % 2 == 0:
            logs = {"loss": 2.5 / step, "learning_rate": 1e-3, "num_tokens": 1500.0 * step, "epoch": 0.5}
            callback.on_log(None, state, None, logs=logs)
    callback.on_log(None, state, None, logs={"train_runtime": 1.0, "train_loss": 1.0})
    callback.on_train_end(None, state, None)


def test_progress_bar_on_a_terminal(caplog):
    """On a terminal: one live bar with step, loss and tokens/s; no log lines, no dicts."""
    from rich.console import Console

    from mlan.train.progress import TrainingProgress

    caplog.set_level(logging.INFO, logger="mlan")
    buf = io.StringIO()
    _simulate_training(TrainingProgress(Console(file=buf, force_terminal=True, width=120)))
    shown = buf.getvalue()
    assert "training" in shown and "4/4" in shown and "loss 0.625" in shown and "tok/s" in shown
    assert "{" not in shown and "train_runtime" not in shown
    assert not [r for r in caplog.records if r.name.startswith("mlan.train.progress")]


def test_progress_lines_without_a_terminal(caplog):
    """Output to a file or pipe: the training in INFO lines (no live bar, which would show nothing until the end)."""
    from rich.console import Console

    from mlan.train.progress import TrainingProgress

    caplog.set_level(logging.INFO, logger="mlan")
    buf = io.StringIO()
    _simulate_training(TrainingProgress(Console(file=buf, force_terminal=False)))
    assert buf.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "mlan.train.progress"]
    assert len(lines) == 2 and lines[-1].startswith("step 4/4  loss 0.625  lr 0.001")
    assert "tok/s" in lines[-1]


def test_progress_follows_quiet(caplog):
    """-q (the mlan logger above INFO): no bar and no lines."""
    from rich.console import Console

    from mlan.train.progress import TrainingProgress

    caplog.set_level(logging.WARNING, logger="mlan")
    buf = io.StringIO()
    _simulate_training(TrainingProgress(Console(file=buf, force_terminal=True)))
    assert buf.getvalue() == ""
    assert not [r for r in caplog.records if r.name == "mlan.train.progress"]


# --------------------------------------------------------------------------- experiment tracking


@pytest.mark.slow
def test_report_to_tensorboard_logs_the_training_loss(cli, tiny_llava_dir, tmp_path):
    """training.report_to=tensorboard: event files in <output>/tensorboard/ whose train/loss equals
    the loss mlan recorded at the same steps (loss_log.json), and whose eval/loss is the validation loss."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb-run"
    r = cli(
        "-q", "sft", "tiny", "-o", f"model.path={tiny_llava_dir}", "-o", f"output.dir={out}",
        "-o", "training.max_steps=4", "-o", "training.logging_steps=1", "-o", "training.report_to=tensorboard",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "tb-run.checkpoints").exists()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    mlan_log = json.loads((out / "loss_log.json").read_text())
    recorded = {p["step"]: p["loss"] for p in mlan_log["train"]}
    assert sorted(logged) == sorted(recorded) == [1, 2, 3, 4]
    for step, loss in recorded.items():
        assert logged[step] == pytest.approx(loss, rel=1e-6), step  # TensorBoard stores float32
    results = json.loads((out / "train_results.json").read_text())
    assert [e.value for e in events.Scalars("eval/loss")] == [pytest.approx(results["eval_loss"], rel=1e-6)]
    assert "report_to: tensorboard" in (out / "recipe.yaml").read_text()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tensorbored", "unknown tracker 'tensorbored'"),
        ("[none, wandb]", "none and all stand alone"),
    ],
)
def test_report_to_is_checked(cli, one_line_error, value, message):
    r = cli("validate", str(REPO / "recipes" / "tiny.yaml"), "-o", f"training.report_to={value}")
    assert message in one_line_error(r)


def test_report_to_accepts_a_list(cli):
    r = cli("validate", str(REPO / "recipes" / "tiny.yaml"), "-o", "training.report_to=[tensorboard, wandb]")
    assert r.exit_code == 0, r.output


def test_report_to_needs_the_tracker_installed(monkeypatch):
    """A tracker that is not installed stops the run before any data or model is loaded."""
    from transformers.integrations import integration_utils

    from mlan.config.recipe import check_report_to
    from mlan.errors import MlanError

    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    with pytest.raises(MlanError, match=r"training.report_to wandb: not installed .*pip install wandb"):
        check_report_to(["tensorboard", "wandb"])
    check_report_to("none")
    check_report_to("all")


def test_trackers_match_transformers():
    """The recipe's list of trackers is transformers' list of reporting integrations."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    from mlan.config.recipe import TRACKERS

    assert set(TRACKERS) == set(INTEGRATION_TO_CALLBACK)
