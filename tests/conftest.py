"""Shared fixtures: a tiny LLaVA built once per session, the real data slices, a CLI runner.

Everything is offline and inside the repository: models are built from config, data comes from
the slices bundled in the package (`mlan/assets/data`), and rows of datasets that may not be
redistributed are written by the tests in their Hugging Face schemas (tests/evaldata.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# The tests read nothing outside the repository: the data slices bundled in the package.
BUNDLED_DATA = REPO / "mlan" / "assets" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data slices bundled in the repository (Hugging Face schemas), one folder
    per dataset: `mlan/assets/data` of this checkout, never a folder beside it."""
    return BUNDLED_DATA


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    """A tiny LLaVA folder (model + processor), built once; treat it as read-only."""
    from mlan.tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava", size="tiny", seed=0)


@pytest.fixture
def cli():
    """Run `mlan ...` in process; returns click's Result (exit_code, output, stderr)."""
    from typer.testing import CliRunner

    from mlan.cli import app

    runner = CliRunner()

    def run(*args: str, **kwargs):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


def _one_line_error(result, *, stdout_ok: bool = False) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    if stdout_ok:  # log lines (on stderr) may come before the error, which is the last thing said
        starts = [i for i, x in enumerate(lines) if x.startswith("error: ")]
        lines = lines[starts[-1] :] if starts else lines
    assert len(lines) == 1, result.stderr
    assert stdout_ok or not result.stdout.strip(), result.stdout
    return lines[0]


@pytest.fixture
def one_line_error():
    """How the CLI reports a user error: `one_line_error(result)` checks exit code 2, exactly one
    non-empty line on stderr and nothing on stdout, and returns that line. `stdout_ok=True` lets the
    command print results on stdout and log lines on stderr before the error line, which must be the last
    line on stderr. (click's Result: `stdout` and `stderr` apart, `output` both as the user sees them.)"""
    return _one_line_error


@pytest.fixture(scope="session")
def eval_data(shared_data, tmp_path_factory) -> Path:
    """Local data for every task of the shipped evaluation suites (see tests/evaldata.py)."""
    from evaldata import write_eval_data

    return write_eval_data(tmp_path_factory.mktemp("evaldata"), shared_data)


@pytest.fixture(scope="session", autouse=True)
def _scratch_session_cwd(tmp_path_factory):
    """Session- and module-scoped fixtures run in a scratch folder too, never in the repository."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("session-cwd"))
        yield


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Every test runs in its own `tmp_path`: commands that default to `runs/` (the latest run
    pointer, default outputs) write there, never into the repository or beside another test's
    runs. A test that needs another working folder (a project folder) chdirs there itself."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_hub_answer():
    """Whether the hub is reachable is cached for a command's lifetime (mlan.hub); a test that fakes the
    network or the offline variables must not leave its answer to the next test."""
    import mlan.hub

    mlan.hub.hub_unreachable_reason.cache_clear()
    yield
    mlan.hub.hub_unreachable_reason.cache_clear()
