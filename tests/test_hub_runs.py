"""Fail-fast hub checks and the default run locations that chain the everyday commands."""

from __future__ import annotations

import pytest

from mlan import hub
from mlan.errors import MlanError
from mlan.runs import latest_run, record_latest


def test_require_hub_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_unreachable_reason.cache_clear()
    with pytest.raises(MlanError) as e:
        hub.require_hub("org/some-model", "model", "set model.path to a local folder", model=True)
    assert str(e.value) == (
        "model 'org/some-model' is not a local path and the Hugging Face Hub is unreachable "
        "(HF_HUB_OFFLINE is set); set model.path to a local folder"
    )
    hub.require_hub(str(tmp_path), "model", "unused")  # a local path never needs the hub
    hub.hub_unreachable_reason.cache_clear()


def test_unreachable_host_is_reported_not_retried(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    hub.hub_unreachable_reason.cache_clear()
    reason = hub.hub_unreachable_reason()
    hub.hub_unreachable_reason.cache_clear()
    assert reason is not None and reason.startswith("cannot connect to no-such-host.invalid")


def test_latest_run_pointer(tmp_path):
    runs = tmp_path / "runs"
    assert latest_run(runs) is None
    first, second = runs / "a", runs / "b"
    first.mkdir(parents=True)
    second.mkdir()
    record_latest(first, "sft", runs)
    record_latest(second, "sft", runs)
    assert latest_run(runs) == second.resolve()
    second.rmdir()
    assert latest_run(runs) is None
