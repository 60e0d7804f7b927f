"""Every hub repo the shipped YAML files name (mixture sources and contamination sets, evaluation
suite tasks, model ids in fields) is recorded in tests/hub_listings.json, and what it records says
the reference can load: the repo is not a loading script at that revision (datasets >= 4 refuses
those), and it holds the config, split or data files the YAML asks for.

The hub is out of reach in CI, so the listing is what public copies of the hub pages showed when it
was checked (each entry names its sources). The YAML files are read raw, not through mlan's config
models, so a field those models do not know yet (`data_files`) is still checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from mlan.paths import shipped_files

LISTING = Path(__file__).with_name("hub_listings.json")
KINDS = ("data_mixtures", "evaluations", "recipes")

# A hub id is owner/name; shipped local paths start with one of these instead (runs/: mlan's output root).
LOCAL_PREFIXES = ("runs/", "bundled:", "/", ".", "~")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow", ".yaml", ".yml", ".zip", ".txt")
# Fields whose value may be a hub model id (recipes, merge/eval settings, a mixture's tokenizer).
MODEL_KEYS = ("path", "tokenizer", "image_tokens", "processor", "original", "multimodal", "vision_tower", "base_model")
# Source fields naming files inside the hub repo (read with `datasets.load_dataset(repo, data_files=...)`).
FILE_KEYS = ("data_files",)
EVIDENCE = ("seen", "partial", "reported", "inferred")


@dataclass(frozen=True)
class HubRef:
    where: str
    repo: str
    kind: str  # dataset | model
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    data_files: tuple[str, ...] = ()
    local_data: bool = False  # an evaluation task with `data_file`: the hub id is only its schema label


def is_hub_id(value) -> bool:
    return (
        isinstance(value, str)
        and not value.startswith(LOCAL_PREFIXES)
        and HUB_ID.fullmatch(value) is not None
        and not value.lower().endswith(FILE_SUFFIXES)
    )


def _names(value) -> tuple[str, ...]:
    """The file names of a `data_files` value: a string, a list, or {split: string or list}."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, dict):
        return tuple(n for v in value.values() for n in _names(v))
    return tuple(n for v in value or () for n in _names(v))


def _dataset_ref(where: str, entry: dict, split: str) -> list[HubRef]:
    repo = entry.get("dataset")
    if not is_hub_id(repo):
        return []
    files = tuple(n for key in FILE_KEYS for n in _names(entry.get(key)))
    return [
        HubRef(where, repo, "dataset", entry.get("revision"), entry.get("config"), entry.get("split", split), files)
    ]


def _model_refs(where: str, node) -> list[HubRef]:
    """Model ids anywhere in a YAML tree, under the keys that take one (their sibling `revision` too)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in MODEL_KEYS and is_hub_id(value):
                out.append(HubRef(f"{where}.{key}", value, "model", node.get("revision")))
            else:
                out += _model_refs(f"{where}.{key}", value)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _model_refs(f"{where}.{i}", value)
    return out


def mixture_refs(where: str, doc: dict) -> list[HubRef]:
    out = []
    for i, src in enumerate(doc.get("sources") or []):
        out += _dataset_ref(f"{where}: sources.{src.get('name', i)}", src, "train")
    for ev in (doc.get("contamination") or {}).get("evals") or []:
        out += _dataset_ref(f"{where}: contamination.{ev.get('task')}", ev, "test")
    top = {k: v for k, v in doc.items() if k not in ("sources", "contamination")}
    return out + _model_refs(where, top)


def suite_refs(where: str, doc: dict) -> list[HubRef]:
    """The hub data of each task; `lm_eval_task` names lm-eval's own task (not a hub id) and is not read."""
    out = []
    for task in doc.get("tasks") or []:
        local = bool(task.get("data_file"))
        hub = task.get("hub") or {}
        for label, h in (("hub", hub), ("hub.images", hub.get("images") or {})):
            if is_hub_id(h.get("path")):
                at = f"{where}: tasks.{task.get('name')}.{label}"
                out.append(
                    HubRef(at, h["path"], "dataset", h.get("revision"), h.get("name"), h.get("split"), (), local)
                )
    return out


def shipped_refs() -> list[HubRef]:
    walkers = {"data_mixtures": mixture_refs, "evaluations": suite_refs, "recipes": _model_refs}
    out = []
    for kind in KINDS:
        for path in shipped_files(kind):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            out += walkers[kind](f"{kind}/{path.name}", doc)
    return out


def _config(ref: HubRef, configs: dict) -> tuple[str | None, list[str]]:
    """The config a reference reads (datasets' rule: named, else `default`, else the only one)."""
    if ref.config is not None:
        return (
            (ref.config, []) if ref.config in configs else (None, [f"config {ref.config!r} not in {sorted(configs)}"])
        )
    if "default" in configs or len(configs) == 1:
        return ("default" if "default" in configs else next(iter(configs))), []
    return None, [f"no config named and no default among {sorted(configs)}"]


def problems(ref: HubRef, listing: dict) -> list[str]:
    """What keeps a reference from loading, judged by the listing ([] when nothing)."""
    entry = listing["repos"].get(ref.repo)
    if entry is None:
        return [f"{ref.where}: {ref.repo} is not in {LISTING.name} (record what the hub holds for it)"]
    if entry["kind"] == "placeholder":
        return [] if ref.local_data else [f"{ref.where}: {ref.repo} is a placeholder, but this task reads the hub"]
    if entry["kind"] != ref.kind:
        return [f"{ref.where}: {ref.repo} is listed as a {entry['kind']}, used as a {ref.kind}"]
    rev = entry["revisions"].get(ref.revision or "main")
    if rev is None:
        return [f"{ref.where}: {ref.repo} revision {ref.revision or 'main'} not listed ({sorted(entry['revisions'])})"]
    at = f"@{ref.revision}" if ref.revision else ""
    if ref.kind == "dataset" and rev["script"]:  # nothing else of it loads
        return [f"{ref.where}: {ref.repo}{at}: holds the loading script {rev['script']} (datasets >= 4 refuses it)"]
    found = []
    for name in ref.data_files:
        if not any(fnmatch(f, name) or fnmatch(name, f) for f in rev["files"]):
            found.append(f"no file {name!r}")
    if ref.kind == "dataset" and not ref.data_files:
        config, why = _config(ref, rev["configs"])
        found += why
        if config is not None and ref.split and ref.split not in rev["configs"][config]:
            found.append(f"config {config} has no split {ref.split!r} ({sorted(rev['configs'][config])})")
    return [f"{ref.where}: {ref.repo}{at}: {p}" for p in found]


@pytest.fixture(scope="module")
def listing() -> dict:
    return json.loads(LISTING.read_text(encoding="utf-8"))


def test_every_shipped_hub_reference_is_listed_and_loadable(listing):
    refs = shipped_refs()
    assert len(refs) > 50, "the walker found too few hub references: is it reading the shipped YAML files?"
    bad = [p for ref in refs for p in problems(ref, listing)]
    assert not bad, "\n".join(bad)


def test_walker_reads_sources_evals_suites_and_skips_names_that_are_not_hub_ids():
    refs = shipped_refs()
    repos = {r.repo for r in refs}
    assert {
        "allenai/cosmos_qa", "Multimodal-Fatima/VQAv2_train", "HuggingFaceM4/A-OKVQA", "Rowan/hellaswag",
        "lmms-lab/GQA", "EleutherAI/race", "cais/mmlu", "mlan-lab/world",
    } <= repos  # fmt: skip
    assert "HuggingFaceM4/VQAv2" not in repos  # script-only: replaced in every mixture
    cosmos = {(r.revision, r.split) for r in refs if r.repo == "allenai/cosmos_qa"}
    assert cosmos == {("refs/convert/parquet", "train")}
    gqa_images = [r for r in refs if r.where.endswith("tasks.gqa.hub.images")]
    assert [(r.repo, r.config, r.split) for r in gqa_images] == [("lmms-lab/GQA", "testdev_balanced_images", "testdev")]
    # lm-eval task names (race, gsm8k, ...), local paths (runs/..., bundled:...) and data files are not hub ids.
    assert not {r for r in refs if "/" not in r.repo or r.repo.startswith(LOCAL_PREFIXES)}
    assert all(not is_hub_id(v) for v in ("race", "runs/tiny-model", "bundled:squad/validation.jsonl", "a/b.jsonl"))
    assert all(is_hub_id(v) for v in ("lmsys/vicuna-7b-v1.5", "allenai/ai2_arc", "liuhaotian/LLaVA-Pretrain"))


def test_checks_catch_script_repos_missing_files_configs_and_splits(listing):
    """The checker itself: a spec using data_files, and each way a reference can fail to load."""
    spec = {
        "sources": [
            {"name": "mlan80k", "dataset": "WangResearchLab/MLAN", "data_files": "MLAN_80k.json", "adapter": "chat"},
            {"name": "mlanv", "dataset": "WangResearchLab/MLAN", "data_files": {"train": ["MLAN_v_88l_80k.json"]}},
            {"name": "lcs", "dataset": "liuhaotian/LLaVA-Pretrain", "data_files": ["blip_laion_cc_sbu_558k.json"]},
            {"name": "typo", "dataset": "WangResearchLab/MLAN", "data_files": "MLAN_90k.json"},
            {"name": "script", "dataset": "allenai/cosmos_qa", "split": "train"},
            {"name": "vqa", "dataset": "HuggingFaceM4/VQAv2"},
            {"name": "cfg", "dataset": "allenai/ai2_arc", "config": "ARC-Hard"},
            {"name": "noconfig", "dataset": "allenai/ai2_arc"},
            {"name": "split", "dataset": "allenai/cosmos_qa", "revision": "refs/convert/parquet", "split": "dev"},
            {"name": "rev", "dataset": "rajpurkar/squad", "revision": "v2"},
            {"name": "new", "dataset": "someone/unlisted"},
            {"name": "local", "dataset": "runs/data/x.jsonl"},
        ],
        "tokenizer": "lmsys/vicuna-7b-v1.5",
    }
    suite = {"tasks": [{"name": "t", "hub": {"path": "mlan-lab/world", "split": "test"}}]}
    refs = mixture_refs("spec", spec) + suite_refs("suite", suite)
    found = {r.where.split(".")[1]: problems(r, listing) for r in refs}
    assert found.pop("mlan80k") == found.pop("mlanv") == found.pop("lcs") == found.pop("tokenizer") == []
    expected = {
        "typo": "no file 'MLAN_90k.json'",
        "script": "loading script cosmos_qa.py",
        "vqa": "loading script VQAv2.py",
        "cfg": "config 'ARC-Hard' not in",
        "noconfig": "no config named and no default",
        "split": "has no split 'dev'",
        "rev": "revision v2 not listed",
        "new": "is not in hub_listings.json",
        "t": "is a placeholder, but this task reads the hub",
    }
    assert set(found) == set(expected)  # the local source yields no reference
    for name, text in expected.items():
        assert len(found[name]) == 1 and text in found[name][0], (name, found[name])


def test_listing_entries_say_where_they_come_from(listing):
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", listing["checked"])
    for repo, entry in listing["repos"].items():
        assert HUB_ID.fullmatch(repo), repo
        assert entry["kind"] in ("dataset", "model", "placeholder"), repo
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["checked"]), repo
        assert entry["revisions"], repo
        for name, rev in entry["revisions"].items():
            assert rev["source"] and rev["evidence"] in EVIDENCE, (repo, name)
            assert rev["script"] is None or rev["script"] == repo.split("/")[1] + ".py", (repo, name)
            assert set(rev["configs"]) or entry["kind"] != "dataset" or rev["script"] or _json_only(rev), (repo, name)


def _json_only(rev: dict) -> bool:
    # Repos read only through data_files (released JSON + image zips) have no configs to record.
    return all(f.endswith((".json", ".jsonl", ".zip", ".md", ".gitattributes")) for f in rev["files"])


def test_script_repo_alternatives_in_code_match_the_listing(listing):
    """mlan's one-line error names a replacement for the script repos it knows; each is listed as
    a script on main, and what it points to is listed as loadable."""
    from mlan.hub import SCRIPT_REPO_ALTERNATIVES

    for repo, alternative in SCRIPT_REPO_ALTERNATIVES.items():
        entry = listing["repos"][repo]
        assert entry["revisions"]["main"]["script"], repo
        if "refs/convert/parquet" in alternative:
            target = HubRef(repo, repo, "dataset", "refs/convert/parquet", split="train")
        else:
            target = HubRef(repo, alternative.split()[0], "dataset", split="train")
        assert problems(target, listing) == [], alternative
