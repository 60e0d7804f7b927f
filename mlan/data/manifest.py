"""The mixture manifest: what went in, in what proportions (examples AND tokens), how it was
rendered, what was removed, and which evaluation tasks it overlaps. Training copies it next to
the model (`mixture_manifest.json`) and evaluation reads `covers_eval_tasks` to mark tasks seen."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import mlan
from mlan.config.mixture import MixtureSpec
from mlan.data.templates import template_text

MODALITIES = ("language", "vision")


def config_hash(spec: MixtureSpec) -> str:
    """SHA-256 of the resolved spec (defaults filled in, keys sorted)."""
    data = spec.model_dump(mode="json")
    # `replace` came later; left at its default (the earlier behaviour) it keeps older specs' hashes, so
    # their built folders are not taken for stale.
    for src in data["sources"]:
        if not src["replace"]:
            del src["replace"]
    # Likewise the teacher step, which changes no row unless the targets are rationales.
    if data["targets"] == "answer":
        del data["targets"], data["rationales"]
    _drop_default_required(data)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def draw_hash(spec: MixtureSpec) -> str:
    """SHA-256 of what decides which rows a spec draws and how they read (sources, seed, sizes, hygiene), not
    its name or its targets: a rationale store made for a spec serves the same spec with `targets: rationale`."""
    data = json.loads(json.dumps(spec.model_dump(mode="json")))
    for key in ("name", "description", "targets", "rationales", "tokenizer", "image_tokens"):
        data.pop(key, None)
    _drop_default_required(data)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _drop_default_required(data: dict[str, Any]) -> None:
    """`contamination.required` came later; at its default it keeps older specs' hashes (and their built
    folders and rationale stores current)."""
    if not data["contamination"].get("required", True):
        del data["contamination"]["required"]


def _share(a: int, b: int) -> float | None:
    return round(a / (a + b), 6) if a + b else None


def build_manifest(
    spec: MixtureSpec,
    stats: list,
    *,
    splits: dict[str, int],
    content_hash: str,
    tokenizer: str,
    image_tokens: tuple[int, str],
    dedup,
    checker,
    seconds: float,
    targets: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict (counts and tokens describe the train split)."""
    per_modality = _per_modality(stats)
    templates: Counter = Counter()
    for st in stats:
        templates.update(st.templates)
    lang, vis = per_modality["language"], per_modality["vision"]
    return {
        "name": spec.name,
        "description": spec.description,
        "mlan_version": mlan.__version__,
        "seed": spec.seed,
        "config_hash": config_hash(spec),
        "content_hash": content_hash,
        "splits": splits,
        # How `size` rescaled the spec's counts ({from, to, counts: {source: [before, after]}}), or None.
        "scaled": spec.scaled,
        # What the assistant turns hold (mlan.data.mixture.targets_form), and for rationales the store joined.
        "targets": targets or {"form": "answer"},
        "sources": {st.name: _source_entry(st) for st in stats},
        "modalities": per_modality,
        "ratios": {
            "examples_language_share": _share(lang["examples"], vis["examples"]),
            "tokens_language_share": _share(lang["tokens"], vis["tokens"]),
            "examples_language_to_vision": round(lang["examples"] / vis["examples"], 6) if vis["examples"] else None,
            "tokens_language_to_vision": round(lang["tokens"] / vis["tokens"], 6) if vis["tokens"] else None,
        },
        "tokens": {
            "tokenizer": tokenizer,
            "image_tokens_per_image": image_tokens[0],
            "image_tokens_from": image_tokens[1],
            "text_tokens": "content of every message, without special tokens or chat template",
        },
        "templates": {
            "used": dict(sorted(templates.items())),
            "texts": {t: template_text(t) for t in sorted(templates)},
        },
        "hygiene": {
            "dedup": dedup is not None,
            "exact_duplicates": dedup.exact if dedup else 0,
            "near_duplicates": dedup.near if dedup else 0,
            "bad_rows": sum(st.bad_rows for st in stats),
        },
        "contamination": _contamination(spec, checker),
        "covers_eval_tasks": sorted({t for st in stats if st.train + st.validation for t in st.covers}),
        "spec": spec.model_dump(mode="json"),
        "build_seconds": round(seconds, 2),
    }


def _per_modality(stats: list) -> dict[str, dict[str, int]]:
    """Train-split examples, tokens and images summed per modality."""
    per_modality = {
        m: {"examples": 0, "text_tokens": 0, "image_tokens": 0, "tokens": 0, "images": 0} for m in MODALITIES
    }
    for st in stats:
        # Counted per row, since a `llava` source mixes both modalities; only vision rows have images.
        for m in MODALITIES:
            pm = per_modality[m]
            pm["examples"] += st.train_by_modality[m]
            pm["text_tokens"] += st.text_tokens_by_modality[m]
            pm["tokens"] += st.text_tokens_by_modality[m]
        per_modality["vision"]["image_tokens"] += st.image_tokens
        per_modality["vision"]["tokens"] += st.image_tokens
        per_modality["vision"]["images"] += st.images
    return per_modality


def _source_modality(st) -> str:
    """The modality of a source's train rows: `mixed` when it gave both (a `llava` source), else the one
    it gave, else (no train rows) the modality its spec implies."""
    seen = [m for m in MODALITIES if st.train_by_modality[m]]
    return "mixed" if len(seen) > 1 else seen[0] if seen else st.modality


def _source_entry(st) -> dict[str, Any]:
    return {
        "dataset": st.dataset,
        "adapter": st.adapter,
        "modality": _source_modality(st),
        "rows_in_source": st.rows_in_source,
        # Rows written; `left_out_no_rationale` were drawn but had no kept rationale (targets: rationale).
        "train": st.train - st.no_rationale["train"],
        "drawn_with_replacement": st.replace,
        # Train rows that repeat a row drawn before (replace: true); distinct rows are train - repeats.
        "repeats": st.repeats,
        "train_by_modality": {m: st.train_by_modality[m] for m in MODALITIES},
        "validation": st.validation - st.no_rationale["validation"],
        "left_out_no_rationale": {k: st.no_rationale[k] for k in ("train", "validation")},
        "rows_examined": st.examined,
        "bad_rows": st.bad_rows,
        "bad_row_examples": st.bad_row_examples,
        "exact_duplicates": st.exact_duplicates,
        "near_duplicates": st.near_duplicates,
        "contaminated_dropped": st.contaminated_dropped,
        "text_tokens": st.text_tokens,
        "image_tokens": st.image_tokens,
        "images": st.images,
        "covers": st.covers,
    }


def _contamination(spec: MixtureSpec, checker) -> dict[str, Any]:
    contamination: dict[str, Any] = {"checked": checker is not None and bool(checker.indexes)}
    if checker is not None:
        contamination.update(
            # The evaluation sets compared with, and those skipped because they could not be read ({task: why}).
            sets_checked=[idx.task for idx in checker.indexes],
            not_checked=dict(checker.skipped),
            required=spec.contamination.required,
            method=f"normalised exact match, or >= {checker.threshold:g} of the word {checker.n}-grams of the shorter "
            "question shared with one evaluation question; counts cover every row examined while sampling",
            drop=spec.contamination.drop,
            tasks={task: vars(r) for task, r in sorted(checker.reports.items())},
        )
    return contamination
