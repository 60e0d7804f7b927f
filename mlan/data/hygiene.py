"""Hygiene: duplicate removal inside a mixture and a contamination check against evaluation data.

Duplicates. Two rows are exact duplicates when their normalised question, context, options,
answer and image bytes agree. They are near duplicates when they agree after also ignoring the
answer and the order of the options, with the question compared as a bag of words: the same
question re-punctuated, re-cased, re-worded in order or with shuffled options. A row is compared
only with rows of the same context and images, so "What colour is the bus?" on two different
images, or two different questions on one SQuAD passage, are not duplicates. Keys are 16-byte
digests, so memory grows by a few dozen bytes per row.

Contamination. An evaluation question matches a mixture question when their normalised texts
are equal (exact), or when they share at least `threshold` of the word n-grams of the shorter of
the two (n-gram overlap, in the spirit of GPT-3's 13-gram test, with a shorter n for questions);
a question quoted inside a longer one is caught, boilerplate shared by many questions is not.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field

from mlan.config.mixture import MixtureSpec
from mlan.data.sources import open_dataset
from mlan.errors import MlanError
from mlan.schemas import Item

log = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    """Lowercase, unicode-folded, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def _digest(*parts: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.digest()


class Deduplicator:
    """Remembers the rows accepted so far and tells whether a new one repeats one of them."""

    def __init__(self) -> None:
        self._exact: set[bytes] = set()
        self._near: set[bytes] = set()
        self.exact = 0
        self.near = 0

    def seen(self, item: Item, image_digests: list[str]) -> str | None:
        """`exact`, `near` or None (then the row is remembered)."""
        if item.kind == "chat":
            convo = "\x1e".join(f"{m['role']}:{normalize(m['content'])}" for m in item.messages)
            group, exact, near = _digest(*image_digests), convo, normalize(item.question)
        else:
            group = _digest(normalize(item.context or ""), *image_digests)
            choices = [normalize(c) for c in item.choices or []]
            exact = "\x1e".join([normalize(item.question), *choices, normalize(item.target())])
            near = "\x1e".join([" ".join(sorted(normalize(item.question).split())), *sorted(choices)])
        ek, nk = _digest("e", exact) + group, _digest("n", near) + group
        if ek in self._exact:
            self.exact += 1
            return "exact"
        if nk in self._near:
            self.near += 1
            return "near"
        self._exact.add(ek)
        self._near.add(nk)
        return None


def ngrams(words: list[str], n: int) -> list[str]:
    """Word n-grams as strings (a text shorter than n gives itself)."""
    if len(words) < n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


@dataclass
class EvalIndex:
    """The normalised questions of one evaluation task and an n-gram -> question index."""

    task: str
    rows: int = 0
    exact: set[str] = field(default_factory=set)
    grams: dict[str, list[int]] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # n-grams per evaluation question

    def add(self, words: list[str], n: int) -> None:
        qid = len(self.sizes)
        grams = set(ngrams(words, n))
        self.sizes.append(len(grams))
        self.rows += 1
        self.exact.add(" ".join(words))
        for g in grams:
            ids = self.grams.setdefault(g, [])
            if len(ids) < 8:  # boilerplate n-grams shared by many questions need not name them all
                ids.append(qid)

    def overlap(self, grams: set[str]) -> float:
        """Largest share of shared n-grams with one evaluation question, relative to the shorter
        of the two, so a question quoted inside a longer one still counts."""
        hits: dict[int, int] = {}
        for g in grams:
            for qid in self.grams.get(g, ()):
                hits[qid] = hits.get(qid, 0) + 1
        return max((h / min(len(grams), self.sizes[q]) for q, h in hits.items()), default=0.0)


@dataclass
class TaskReport:
    """Overlaps of the mixture with one evaluation task."""

    eval_rows: int
    exact: int = 0
    ngram: int = 0
    dropped: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


class ContaminationChecker:
    """Matches mixture questions against the questions of several evaluation tasks."""

    def __init__(self, n: int, threshold: float) -> None:
        self.n = n
        self.threshold = threshold
        self.indexes: list[EvalIndex] = []
        self.reports: dict[str, TaskReport] = {}
        # Evaluation sets that could not be read and were left out of the check: {task: why}.
        self.skipped: dict[str, str] = {}

    def add_task(self, task: str, questions) -> None:
        """Index an iterable of evaluation question strings."""
        idx = EvalIndex(task)
        for q in questions:
            words = normalize(q).split()
            if words:
                idx.add(words, self.n)
        self.indexes.append(idx)
        self.reports[task] = TaskReport(eval_rows=idx.rows)

    def check(self, question: str) -> list[tuple[str, str]]:
        """[(task, "exact" | "ngram")] for every task the question overlaps."""
        words = normalize(question).split()
        if not words:
            return []
        text = " ".join(words)
        grams = set(ngrams(words, self.n))
        hits = []
        for idx in self.indexes:
            if text in idx.exact:
                hits.append((idx.task, "exact"))
            elif idx.overlap(grams) >= self.threshold:
                hits.append((idx.task, "ngram"))
        return hits

    def record(self, hits: list[tuple[str, str]], source: str, row_id: str, dropped: bool) -> None:
        """Count one overlapping mixture row in the per-task reports."""
        for task, how in hits:
            r = self.reports[task]
            setattr(r, how, getattr(r, how) + 1)
            r.dropped += int(dropped)
            r.by_source[source] = r.by_source.get(source, 0) + 1
            if len(r.examples) < 5:
                r.examples.append(f"{source}:{row_id}")


def contamination_checker(spec: MixtureSpec) -> ContaminationChecker | None:
    """A checker indexing the questions of every evaluation set the spec names (None without any).

    A set that cannot be read (not in --data-dir and the hub unreachable; RACE, say, is never bundled) is
    skipped with one warning line for all of them and listed in `checker.skipped`, unless
    `contamination.required` asks to stop there. A set that is read but lacks a question column still stops."""
    cfg = spec.contamination
    if not cfg.evals:
        return None
    checker = ContaminationChecker(cfg.ngram, cfg.ngram_threshold)
    # Every set is opened (and its columns checked) before any is indexed, so a stop comes before the work.
    opened = []
    for ev in cfg.evals:
        what = f"contamination eval {ev.task!r} ({ev.dataset})"
        try:
            ds = open_dataset(ev.dataset, config=ev.config, split=ev.split, revision=ev.revision, what=what)
        except MlanError as e:
            if cfg.required:
                raise MlanError(
                    f"{e} (contamination.required: true; set it to false to skip unreadable sets)"
                ) from None
            checker.skipped[ev.task] = str(e).removeprefix(f"{what}: ")
            continue
        tops = [f.split(".")[0] for f in ev.question_fields]
        missing = [t for t in tops if t not in ds.column_names]
        if missing:
            raise MlanError(f"{what}: no column {missing[0]!r} (columns: {', '.join(ds.column_names)})")
        opened.append((ev, ds.select_columns(sorted(set(tops)))))
    if checker.skipped:
        log.warning(
            "contamination: not checked against %s: cannot be read (offline and not in --data-dir?); the manifest "
            "says why under contamination.not_checked (contamination.required: true stops instead)",
            ", ".join(checker.skipped),
        )
    for ev, ds in opened:

        def questions(ds=ds, fields=ev.question_fields):
            for batch in ds.iter(batch_size=1000):
                n = len(next(iter(batch.values())))
                for i in range(n):
                    parts = []
                    for f in fields:
                        head, *rest = f.split(".")
                        v = batch[head][i]
                        for r in rest:
                            v = v.get(r) if isinstance(v, dict) else None
                        if v:
                            parts.append(str(v))
                    yield " ".join(parts)

        checker.add_task(ev.task, questions())
        log.info("contamination: indexed %d questions of %s", checker.reports[ev.task].eval_rows, ev.task)
    return checker
