"""Filling one source's share of a mixture: walking a seeded permutation of its rows (each row at
most once), or drawing its training rows with replacement (`replace: true`, as MLAN's data
preparation does).

Each row examined is read by the source's adapter, checked (bad row, duplicate, contamination),
rendered from the templates and written; every reason a row is left out is counted in the source's
stats for the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlan.config.mixture import MixtureSpec, SourceSpec
from mlan.data.adapters import ADAPTER_FUNCS
from mlan.data.sources import base_folder, is_local, load_image_bytes
from mlan.data.templates import render
from mlan.errors import MlanError
from mlan.paths import resolve_data_path
from mlan.schemas import BadRow, Item, is_json_lines

if TYPE_CHECKING:
    from mlan.data.hygiene import ContaminationChecker, Deduplicator

log = logging.getLogger(__name__)

MAX_BAD_EXAMPLES = 5
# Repeated rows are written in chunks, re-reading the images of each chunk's rows once.
REPEAT_CHUNK = 256


def stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def label(src: SourceSpec) -> str:
    return f"source {src.name!r} ({src.dataset})"


def iter_rows(ds, batch_size: int = 256):
    """Rows as dicts, read in Arrow batches (iterating a Dataset row by row is several times slower)."""
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            yield dict(zip(keys, values, strict=True))


class SourceFill:
    """One source's rows into the train and validation writers (`stats` says how many of each)."""

    def __init__(
        self,
        src: SourceSpec,
        ds,
        stats,
        spec: MixtureSpec,
        dedup,
        checker,
        writers,
        image_tokens: int,
        *,
        rationales: dict[str, str] | None = None,
        on_row: Callable[[SourceSpec, str, dict, Item, list], None] | None = None,
    ):
        """`rationales` (targets: rationale): the kept rationale of each row id; a row without one is drawn
        as always but left out and counted. `on_row(src, row id, source row, item, images)`: called for every
        row drawn, before it is rendered (mlan rationales collects its rows so)."""
        import numpy as np

        self.src, self.ds, self.stats, self.spec = src, ds, stats, spec
        self.dedup: Deduplicator | None = dedup
        self.checker: ContaminationChecker | None = checker
        self.writers, self.image_tokens = writers, image_tokens
        self.perm = np.random.default_rng([spec.seed, stable_int(src.name)]).permutation(len(ds))
        self.pos = 0
        self.rng = random.Random(f"{spec.seed}/{src.name}")
        self.adapter = ADAPTER_FUNCS[src.adapter]
        self.root = resolve_data_path(src.image_root) if src.image_root else base_folder(src.dataset)
        self.is_jsonl = is_local(src.dataset) and is_json_lines(resolve_data_path(src.dataset))
        self.rationales, self.on_row = rationales, on_row

    def run(self) -> None:
        st = self.stats
        need, t0 = st.train + st.validation, time.perf_counter()
        if need == 0:
            return
        if self.src.replace:
            # Validation first, as distinct rows from the permutation's head; train rows are then drawn
            # from the rows after it, so no validation row is ever trained on.
            self.walk(st.validation, train=0)
            self.draw_train()
        else:
            self.walk(need, train=st.train)
        log.info(
            "%s: %d rows (%d train, %d validation) in %.1f s",
            self.src.name,
            need,
            st.train,
            st.validation,
            time.perf_counter() - t0,
        )

    def accept(self, row, idx: int) -> tuple[dict, bytes, list[str], list] | None:
        """One source row as a mixture row `(row, digest, template ids, images)`, or None when it is
        bad, a duplicate or contaminated (and dropped); the reason is counted in the stats."""
        src, stats = self.src, self.stats
        stats.examined += 1
        item = None
        try:
            item = self.adapter(row, src)
            blobs = [load_image_bytes(v, self.root) for v in item.images or []]
            if src.modality == "vision" and not blobs:
                raise BadRow("no image in a vision source")
        except (BadRow, ValueError) as e:
            rid = getattr(e, "row_id", None) or (item.id if item is not None else None)
            where = f"row {idx}" + (f" (line {idx + 1})" if self.is_jsonl else "") + (f", id {rid!r}" if rid else "")
            if src.bad_rows == "fail":
                raise MlanError(f"{label(src)}: {where}: {e} (set bad_rows: skip to skip such rows)") from None
            stats.bad_rows += 1
            if len(stats.bad_row_examples) < MAX_BAD_EXAMPLES:
                stats.bad_row_examples.append(f"{where}: {e}")
            return None
        image_digests = [hashlib.sha256(b).hexdigest() for b, _ in blobs]
        if self.dedup is not None:
            dup = self.dedup.seen(item, image_digests)
            if dup:
                setattr(stats, f"{dup}_duplicates", getattr(stats, f"{dup}_duplicates") + 1)
                return None
        row_id = f"{src.name}:{item.id or idx}"
        hits = self.checker.check(item.question) if self.checker is not None else []
        if hits:
            self.checker.record(hits, src.name, row_id, dropped=self.spec.contamination.drop)
            if self.spec.contamination.drop:
                stats.contaminated_dropped += 1
                return None
        if self.on_row is not None:
            self.on_row(src, row_id, row, item, blobs)
        cot_share = src.chain_of_thought
        if self.rationales is not None:
            # MLAN's join: every row ends in its teacher rationale, the phrase and the answer.
            item = dataclasses.replace(item, rationale=self.rationales.get(row_id))
            cot_share = 1.0
            if src.adapter == "squad":
                # MLAN joined SQuAD's first answer as the dataset holds it (`answers.text[0]`, surrounding
                # spaces and all: evaluate_util.py, class SQuAD); the adapter's stripped gold is mlan's.
                item.answer = str(row["answers"]["text"][0])
        messages, template_ids = render(item, self.rng, cot_share)
        out = {
            "messages": messages,
            "images": [{"bytes": b, "path": name} for b, name in blobs],
            "modality": "vision" if blobs else "language",
            "source": src.name,
            "id": row_id,
        }
        digest = hashlib.sha256(
            json.dumps([messages, out["modality"], src.name, row_id, image_digests], sort_keys=True).encode()
        ).digest()
        return out, digest, template_ids, blobs

    def write(self, out: dict, digest: bytes, template_ids: list[str], train: bool) -> None:
        st = self.stats
        if self.rationales is not None and not any(t.startswith("cot/") for t in template_ids):
            # No kept rationale: left out, not replaced, so the rows still match the teacher's one to one.
            st.no_rationale["train" if train else "validation"] += 1
            return
        if train:
            n_images = len(out["images"])
            st.train_by_modality[out["modality"]] += 1
            st.templates.update(template_ids)
            st.images += n_images
            st.image_tokens += n_images * self.image_tokens
        self.writers[0 if train else 1].add(out, digest, st)

    def walk(self, need: int, train: int) -> None:
        """Accept `need` more rows along the permutation, the first `train` of them for training."""
        n, accepted, st = len(self.ds), 0, self.stats
        while accepted < need:
            if self.pos >= n:
                raise MlanError(
                    f"{label(self.src)}: only {accepted} usable rows of {n} ({st.bad_rows} bad, "
                    f"{st.exact_duplicates + st.near_duplicates} duplicates, {st.contaminated_dropped} "
                    f"contaminated) but {need} needed; lower its count/fraction"
                )
            # Over-read a little so skipped rows rarely need a second pass.
            start = self.pos
            take = self.perm[start : start + min(n - start, need - accepted + (need - accepted) // 10 + 16)]
            self.pos += len(take)
            for j, (idx, row) in enumerate(zip(take.tolist(), iter_rows(self.ds.select(take)), strict=True)):
                got = self.accept(row, idx)
                if got is None:
                    continue
                out, digest, template_ids, _ = got
                self.write(out, digest, template_ids, train=accepted < train)
                accepted += 1
                if accepted % 10000 == 0:
                    log.info("%s: %d/%d rows", self.src.name, accepted, need)
                if accepted >= need:
                    # Rows read ahead but not examined stay available to the draws that follow (replace: true).
                    self.pos = start + j + 1
                    break

    def draw_train(self) -> None:
        """Draw the training rows uniformly with replacement from the rows the validation walk left.

        A draw of a row that turns out bad, duplicate or dropped as contaminated is drawn again. A row
        drawn again repeats the row as rendered the first time (MLAN repeats the formatted row too:
        `random.choice` over formatted rows, ToviTu/IT_MLLM@db5622b4:scripts/anno/prepare_lang_it.py L27)
        with `#2`, `#3`... after its id; repeats are counted in the manifest.
        """
        import numpy as np

        pool = self.perm[self.pos :]
        draws = np.random.default_rng([self.spec.seed, stable_int(self.src.name), 1])
        kept: dict[int, tuple[dict, bytes, list[str]]] = {}  # source row -> (row without images, digest, templates)
        rejected: set[int] = set()
        repeats: list[int] = []
        drawn = 0
        while drawn < self.stats.train:
            if len(rejected) >= len(pool):
                raise MlanError(
                    f"{label(self.src)}: no usable row left to draw training rows from ({len(pool)} rows after "
                    f"validation, all bad, duplicate or contaminated); lower the validation size or check the source"
                )
            batch = pool[draws.integers(0, len(pool), size=self.stats.train - drawn)].tolist()
            fresh = [i for i in dict.fromkeys(batch) if i not in kept and i not in rejected]
            for idx, row in zip(fresh, iter_rows(self.ds.select(fresh)), strict=True):
                got = self.accept(row, idx)
                if got is None:
                    rejected.add(idx)
                    continue
                out, digest, template_ids, _ = got
                self.write(out, digest, template_ids, train=True)
                kept[idx] = ({**out, "images": len(out["images"])}, digest, template_ids)
            first = set(fresh)
            for idx in batch:
                if idx in rejected:
                    continue
                drawn += 1
                if idx in first:
                    first.discard(idx)  # this draw is the row's first copy, written above
                else:
                    repeats.append(idx)
        self._write_repeats(repeats, kept)

    def _write_repeats(self, repeats: list[int], kept: dict[int, tuple[dict, bytes, list[str]]]) -> None:
        copies: Counter = Counter()
        for start in range(0, len(repeats), REPEAT_CHUNK):
            chunk = repeats[start : start + REPEAT_CHUNK]
            with_images = sorted({i for i in chunk if kept[i][0]["images"]})
            # Images are not kept in memory between draws (tens of thousands of photos): read them again.
            images: dict[int, list[dict[str, Any]]] = {}
            rows = iter_rows(self.ds.select(with_images)) if with_images else ()
            for idx, row in zip(with_images, rows, strict=True):
                blobs = [load_image_bytes(v, self.root, check=False) for v in self.adapter(row, self.src).images or []]
                images[idx] = [{"bytes": b, "path": name} for b, name in blobs]
            for idx in chunk:
                base, digest, template_ids = kept[idx]
                copies[idx] += 1
                k = copies[idx] + 1
                out = {**base, "id": f"{base['id']}#{k}", "images": images.get(idx, [])}
                self.write(out, hashlib.sha256(digest + f"#{k}".encode()).digest(), template_ids, train=True)
                self.stats.repeats += 1
