"""`size` (and `mlan build-mixture --size N`) shrinks or grows a preset by its shares: every count scaled with
the largest remainder to the exact total, a validation count by the same factor, the scaling in the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_everyday import SOURCES  # data_mixtures/mlan.yaml's sources as local copies

OFFLINE = ["-o", "tokenizer=null", "-o", "contamination.evals=[]"]


def local_sources(shared: Path, dest: Path) -> Path:
    for dst, src in SOURCES.items():
        (dest / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / f"{src}.jsonl", dest / f"{dst}.jsonl")
    return dest


def test_scaled_preset_keeps_shares_and_exact_total(cli, tmp_path, shared_data):
    data = local_sources(shared_data, tmp_path / "data")
    out = tmp_path / "mlan160"
    r = cli("build-mixture", "data_mixtures/mlan.yaml", "--data-dir", data, "--size", "160", "--out", out, *OFFLINE)
    assert r.exit_code == 0, r.output
    assert "80,000 -> 160 training rows" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    # By hand: 160 * (20000, 15000, 15000, 15000, 10019, 4981) / 80000 = 40, 30, 30, 30, 20.038, 9.962; the
    # floors sum to 159 and the one row left goes to the largest remainder (arc_challenge, .962).
    want = {"squad": 40, "strategyqa": 30, "commonsense_qa": 30, "cosmos_qa": 30, "arc_easy": 20, "arc_challenge": 10}
    assert {k: s["train"] for k, s in m["sources"].items()} == want
    # validation 800 of 80000 scales by the same factor: 800 * 160 / 80000 = 1.6 -> 2.
    assert m["splits"] == {"train": 160, "validation": 2}
    before = {"squad": 20000, "strategyqa": 15000, "commonsense_qa": 15000, "cosmos_qa": 15000}
    before |= {"arc_easy": 10019, "arc_challenge": 4981}
    assert m["scaled"] == {
        "from": 80000,
        "to": 160,
        "counts": {k: [before[k], want[k]] for k in want},
        "validation": [800, 2],
    }
    assert m["spec"]["size"] == 160 and [s["count"] for s in m["spec"]["sources"]] == list(want.values())

    # -o size=N is the same build; the unscaled preset is another one (its config hash differs).
    out2 = tmp_path / "mlan160-o"
    r = cli("build-mixture", "data_mixtures/mlan.yaml", "--data-dir", data, "-o", "size=160", "--out", out2, *OFFLINE)
    assert r.exit_code == 0, r.output
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert (m2["config_hash"], m2["content_hash"]) == (m["config_hash"], m["content_hash"])

    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.data.manifest import config_hash
    from mlan.data.sources import with_local_data
    from mlan.paths import resolve_config

    preset, offline = resolve_config("mlan", "data_mixtures"), ["tokenizer=null", "contamination.evals=[]"]
    full = with_local_data(load_config(preset, MixtureSpec, offline), data)
    assert full.scaled is None and config_hash(full) != m["config_hash"]
    scaled = with_local_data(load_config(preset, MixtureSpec, [*offline, "size=160"]), data)
    assert config_hash(scaled) == m["config_hash"]


def _spec(**kw):
    from mlan.config.mixture import MixtureSpec

    base = {
        "name": "t",
        "sources": [
            {"name": "a", "dataset": "a.jsonl", "adapter": "squad", "count": 600},
            {"name": "b", "dataset": "b.jsonl", "adapter": "arc", "count": 300},
            {"name": "c", "dataset": "c.jsonl", "adapter": "vqav2", "count": 100},
        ],
    }
    return MixtureSpec.model_validate(base | kw)


def test_size_rules():
    # size equal to the total: nothing changes, nothing recorded.
    s = _spec(size=1000, validation=50)
    assert [x.count for x in s.sources] == [600, 300, 100] and s.validation == 50 and s.scaled is None
    # A fraction of validation rows stays a fraction.
    s = _spec(size=7, validation=0.1)
    assert [x.count for x in s.sources] == [4, 2, 1] and s.validation == 0.1
    assert s.scaled == {"from": 1000, "to": 7, "counts": {"a": [600, 4], "b": [300, 2], "c": [100, 1]}}
    # Growing works the same way; a validation count scales by the factor, rounded.
    s = _spec(size=2500, validation=10)
    assert [x.count for x in s.sources] == [1500, 750, 250] and s.validation == 25
    # A modality split scales both modalities by the same rule.
    sources = [
        {"name": "a", "dataset": "a.jsonl", "adapter": "squad"},
        {"name": "c", "dataset": "c.jsonl", "adapter": "vqav2"},
    ]
    s = _spec(sources=sources, modality_split={"language": 280, "vision": 40}, size=100, validation=32)
    # 87.5 and 12.5: the remainders tie, and a tie goes to the first (language); 32 * 100 / 320 = 10.
    assert (s.modality_split.language, s.modality_split.vision, s.validation) == (88, 12, 10)
    assert s.scaled["counts"] == {"language": [280, 88], "vision": [40, 12]}


def test_size_with_fractions_still_checks(tmp_path):
    from mlan.data.mixture import plan_counts
    from mlan.errors import MlanError

    s = _spec(sources=[{"name": "a", "dataset": "a.jsonl", "adapter": "squad", "fraction": 0.5}], size=41)
    assert s.scaled is None
    with pytest.raises(MlanError, match="size: 41 differs from the 40 training rows"):
        plan_counts(s, [80])
