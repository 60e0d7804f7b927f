"""Building a mixture: sample each source (seeded), turn rows into instructions, remove duplicates,
check contamination, write a shuffled `DatasetDict` (train + validation) and its manifest.

Everything a user can get wrong (missing file, unknown adapter, missing column, too few rows,
bad rows under the `fail` policy) raises one `MlanError` line; all checks that need no row
data run before any row is converted, and the output appears only when complete.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan import hub as hf_hub
from mlan.config.mixture import MixtureSpec, apportion
from mlan.data.adapters import required_columns
from mlan.data.fill import SourceFill
from mlan.data.fill import label as _label
from mlan.data.hygiene import Deduplicator, contamination_checker
from mlan.data.manifest import build_manifest
from mlan.data.sources import open_dataset
from mlan.errors import MlanError, first_line
from mlan.io import atomic_dir, atomic_write_json, check_output_dir
from mlan.paths import resolve_data_path
from mlan.tiny import build_tokenizer

log = logging.getLogger(__name__)

WRITE_BATCH = 512
# Adapters whose rows carry their own assistant turns.
GIVEN_TARGETS = ("chat", "llava", "plain")


def features():
    """The mixture's columns (the cross-stage contract)."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "images": List(Image()),
            "modality": Value("string"),
            "source": Value("string"),
            "id": Value("string"),
        }
    )


@dataclass
class SourceStats:
    """What happened to one source while building (recorded in the manifest)."""

    name: str
    dataset: str
    adapter: str
    modality: str
    rows_in_source: int
    train: int
    validation: int
    covers: list[str]
    replace: bool = False
    repeats: int = 0
    examined: int = 0
    bad_rows: int = 0
    bad_row_examples: list[str] = field(default_factory=list)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    contaminated_dropped: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    images: int = 0
    templates: Counter = field(default_factory=Counter)
    # Per row modality of the train rows: a `llava` source holds both kinds in one file.
    train_by_modality: Counter = field(default_factory=Counter)
    text_tokens_by_modality: Counter = field(default_factory=Counter)
    # targets: rationale: rows drawn without a kept rationale, left out ({train, validation}).
    no_rationale: Counter = field(default_factory=Counter)


@dataclass
class MixtureResult:
    """A built mixture: where it is, its manifest, and its content hash."""

    out: Path
    manifest: dict[str, Any]
    content_hash: str
    train_rows: int
    validation_rows: int


def plan_counts(spec: MixtureSpec, sizes: list[int]) -> tuple[list[int], list[int]]:
    """Training and validation rows per source, from counts, fractions or the modality split."""
    if spec.modality_split is not None:
        train = [0] * len(spec.sources)
        for modality in ("language", "vision"):
            idx = [i for i, s in enumerate(spec.sources) if s.modality == modality]
            weights = [spec.sources[i].weight or sizes[i] for i in idx]
            for i, n in zip(idx, apportion(getattr(spec.modality_split, modality), weights), strict=True):
                train[i] = n
    else:
        train = [
            s.count if s.count is not None else round(s.fraction * n) for s, n in zip(spec.sources, sizes, strict=True)
        ]
    total = sum(train)
    if spec.size is not None and total != spec.size:
        raise MlanError(f"size: {spec.size} differs from the {total} training rows the sources' fractions give")
    n_val = int(spec.validation) if spec.validation >= 1 else round(spec.validation * total)
    val = apportion(n_val, train)
    for src, t, v, n in zip(spec.sources, train, val, sizes, strict=True):
        if src.replace and t and v >= n:
            raise MlanError(
                f"{_label(src)}: its {v} validation rows take all {n} rows, leaving none to draw its {t} training "
                "rows from; lower the validation size"
            )
        if not src.replace and t + v > n:
            raise MlanError(
                f"{_label(src)}: asks for {t + v} rows ({t} train + {v} validation) but holds only {n}; "
                "lower its count/fraction or the validation size, or draw with replacement (replace: true)"
            )
    return train, val


def _tokenizer(spec: MixtureSpec):
    """(tokenizer, name recorded in the manifest)."""
    if spec.tokenizer is None:
        return _tiny_tokenizer(), "mlan.tiny.build_tokenizer (byte-level BPE, 2048 tokens)"
    from transformers import AutoTokenizer

    ref = str(resolve_data_path(spec.tokenizer)) if Path(spec.tokenizer).expanduser().exists() else spec.tokenizer
    fix = "give a local tokenizer folder (-o tokenizer=DIR), or count with mlan's tiny tokenizer (-o tokenizer=null)"
    hf_hub.require_hub(ref, "tokenizer", fix, model=True)
    try:
        return AutoTokenizer.from_pretrained(ref), spec.tokenizer
    except Exception as e:  # not a tokenizer folder / unknown id: one line
        raise MlanError(f"tokenizer: cannot load {spec.tokenizer!r}: {first_line(e)}") from None


@functools.cache
def _tiny_tokenizer():
    # Training the tiny BPE takes about a second; reuse it within one process.
    return build_tokenizer()


def image_tokens_per_image(value: int | str) -> tuple[int, str]:
    """(tokens per image, where the number came from): a given number, or measured by running a
    processor on one blank image and counting the image tokens in its output."""
    if isinstance(value, int):
        return value, "given" if value != 576 else "default (LLaVA-1.5, CLIP ViT-L/14 at 336 px)"
    from PIL import Image
    from transformers import AutoProcessor

    hf_hub.require_hub(value, "image_tokens processor", "give a number or a local processor folder", model=True)
    try:
        proc = AutoProcessor.from_pretrained(value)
        token = getattr(proc, "image_token", None) or "<image>"
        token_id = proc.tokenizer.convert_tokens_to_ids(token)
        enc = proc(text=token, images=Image.new("RGB", (336, 336)), return_tensors="np")
    except Exception as e:  # not a multimodal processor: one line
        raise MlanError(f"image_tokens: cannot measure with processor {value!r}: {first_line(e)}") from None
    n = int((enc["input_ids"][0] == token_id).sum())
    if n == 0:
        raise MlanError(f"image_tokens: processor {value!r} produced no {token!r} tokens for an image")
    return n, f"processor {value}"


class _SplitWriter:
    """Streams encoded rows into one Arrow file, counting tokens per source on the way."""

    def __init__(self, path: Path, tokenizer, count_tokens: bool):
        from datasets.arrow_writer import ArrowWriter

        self.path = path
        self.features = features()
        self.writer = ArrowWriter(features=self.features, path=str(path))
        self.tokenizer = tokenizer
        self.count_tokens = count_tokens
        self.pending: list[tuple[dict, SourceStats]] = []
        self.digests: list[bytes] = []

    def add(self, row: dict, digest: bytes, stats: SourceStats) -> None:
        self.pending.append((row, stats))
        self.digests.append(digest)
        if len(self.pending) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.count_tokens:
            texts = ["\n".join(m["content"] for m in row["messages"]) for row, _ in self.pending]
            lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
            for (row, stats), n in zip(self.pending, lengths, strict=True):
                stats.text_tokens += n
                stats.text_tokens_by_modality[row["modality"]] += n
        batch = {k: [row[k] for row, _ in self.pending] for k in self.features}
        self.writer.write_batch(self.features.encode_batch(batch))
        self.pending.clear()

    def close(self):
        from datasets import Dataset

        self.flush()
        self.writer.finalize()
        self.writer.close()
        return Dataset.from_file(str(self.path))


def _open_sources(spec: MixtureSpec) -> list:
    """Open every source and check its columns before any row is converted."""
    opened = []
    for src in spec.sources:
        ds = open_dataset(
            src.dataset,
            config=src.config,
            split=src.split,
            revision=src.revision,
            what=_label(src),
            data_files=src.data_files,
        )
        cols = set(ds.column_names)
        missing = [c for c in required_columns(src) if c not in cols]
        if src.adapter == "vqav2" and not cols & {"answers", "multiple_choice_answer"}:
            missing.append("answers")
        if missing:
            raise MlanError(
                f"{_label(src)}: missing column {missing[0]!r} required by adapter {src.adapter!r} "
                f"(columns: {', '.join(sorted(cols))})"
            )
        opened.append(ds)
    return opened


def targets_form(spec: MixtureSpec) -> str:
    """What the assistant turns hold: `rationale` (a teacher's, joined as MLAN does), `given` (rows that carry
    their own: LLaVA JSON such as MLAN's release, chat rows), `answer` (direct answers from the templates)."""
    if spec.targets == "rationale":
        return "rationale"
    return "given" if all(s.adapter in GIVEN_TARGETS for s in spec.sources) else "answer"


def build_mixture(spec: MixtureSpec, out: str | Path, *, overwrite: bool = False, on_row=None) -> MixtureResult:
    """Build the mixture described by `spec` into `out` (a `save_to_disk` DatasetDict with
    `train` and `validation` splits, plus `manifest.json`); the same spec and seed give the same
    content hash. Raises `MlanError` for every problem in the spec or the data. `on_row`: called for every
    row drawn (`mlan.data.fill.SourceFill`)."""
    import numpy as np
    from datasets import DatasetDict

    out = Path(out)
    check_output_dir(out, overwrite)
    t_start = time.perf_counter()
    rationales, targets = None, {"form": targets_form(spec)}
    if spec.targets == "rationale":
        from mlan.rationales.store import kept_rationales

        rationales, store = kept_rationales(spec)
        targets |= store
    datasets_ = _open_sources(spec)
    sizes = [len(d) for d in datasets_]
    train, val = plan_counts(spec, sizes)
    checker = contamination_checker(spec)
    tokenizer, tokenizer_name = _tokenizer(spec)
    per_image, per_image_from = image_tokens_per_image(spec.image_tokens)
    stats = [
        SourceStats(s.name, s.dataset, s.adapter, s.modality, n, t, v, s.covered_tasks(), replace=s.replace)
        for s, n, t, v in zip(spec.sources, sizes, train, val, strict=True)
    ]
    dedup = Deduplicator() if spec.dedup else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_dir(out, overwrite) as tmp,
        tempfile.TemporaryDirectory(prefix=f".{out.name}.scratch-", dir=out.parent) as scratch,
    ):
        writers = (
            _SplitWriter(Path(scratch) / "train.arrow", tokenizer, count_tokens=True),
            _SplitWriter(Path(scratch) / "validation.arrow", tokenizer, count_tokens=False),
        )
        for src, ds, st in zip(spec.sources, datasets_, stats, strict=True):
            SourceFill(
                src, ds, st, spec, dedup, checker, writers, per_image, rationales=rationales, on_row=on_row
            ).run()
        digests = {name: w.digests for name, w in zip(("train", "validation"), writers, strict=True)}
        splits = {name: w.close() for name, w in zip(("train", "validation"), writers, strict=True)}
        # Rows were written source by source; shuffle them (seeded) so batches mix sources.
        content = hashlib.sha256()
        shuffled = {}
        for i, (name, ds) in enumerate(splits.items()):
            order = np.random.default_rng([spec.seed, i]).permutation(len(ds))
            shuffled[name] = ds.select(order)
            content.update(name.encode() + b"\x00")
            for j in order.tolist():
                content.update(digests[name][j])
        content_hash = content.hexdigest()
        # An empty split needs an explicit shard, or datasets writes no file and cannot load it back.
        shards = {k: 1 for k, v in shuffled.items() if len(v) == 0}
        DatasetDict(shuffled).save_to_disk(str(tmp), num_shards=shards or None)
        manifest = build_manifest(
            spec,
            stats,
            splits={k: len(v) for k, v in splits.items()},
            content_hash=content_hash,
            tokenizer=tokenizer_name,
            image_tokens=(per_image, per_image_from),
            dedup=dedup,
            checker=checker,
            seconds=time.perf_counter() - t_start,
            targets=targets,
        )
        atomic_write_json(tmp / "manifest.json", manifest)
    log.info(
        "mixture %s: %d train + %d validation rows -> %s",
        spec.name,
        len(splits["train"]),
        len(splits["validation"]),
        out,
    )
    return MixtureResult(out, manifest, content_hash, len(splits["train"]), len(splits["validation"]))
