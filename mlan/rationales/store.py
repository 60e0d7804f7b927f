"""The rationale store: one folder per spec, written record by record so a killed run loses nothing.

    <store>/store.json                 what made it: the spec's draw, the teachers, the settings, the exemplars
    <store>/records-<i>-of-<N>.jsonl   one JSON record per row, appended and flushed batch by batch (shard i of N)
    <store>/summary.json, summary.md   rows per status per source, rationale length, teacher tokens, time
    <store>/.rationales-*/             a running run's scratch (the drawn images), removed when it ends

A kill can leave at most a last line without its newline: it is dropped (and its rows generated again) on
the next start, and its scratch folder, which the next start removes. Any other unreadable line is
corruption and stops with the file and line. The same row id never appears twice: a run skips the ids
already recorded. A store without a record pins nothing: the next run takes it over (a run that failed or
was killed before its first batch leaves its store.json behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlan.config.mixture import MixtureSpec
from mlan.errors import MlanError
from mlan.io import atomic_write_json, diff_paths
from mlan.rationales.clean import STATUSES

log = logging.getLogger(__name__)

META = "store.json"
SCRATCH = ".rationales-"  # a run's scratch folder in the store: .rationales-<random>/
_STARTING = ".starting-rationales-"  # the same before its lock is held (a name the sweep passes over)
_LOCK = ".lock"
_RECORDS = re.compile(r"records-(\d+)-of-(\d+)\.jsonl")
RECORD_FIELDS = (
    "id", "source", "modality", "teacher", "settings", "exemplar", "prompt", "gold",
    "raw", "rationale", "status", "prompt_tokens", "new_tokens", "seconds",
)  # fmt: skip
# and, in records written since, "engine"; from a server, "server": {model, prompt_tokens, retries}


# Settings that do not change what a teacher writes: where and how fast it runs.
RUN_ONLY_SETTINGS = (
    "device", "tensor_parallel_size", "store", "gpu_memory_utilization", "base_url", "api_key_env",
    "concurrency", "request_timeout", "max_retries",
)  # fmt: skip


def store_dir(spec: MixtureSpec) -> Path:
    """The spec's store: `rationales.store`, or `runs/rationales/<name>`."""
    from mlan.runs import rationales_dir

    return Path(spec.rationales.store).expanduser() if spec.rationales.store else rationales_dir(spec.name)


def identity(spec: MixtureSpec, exemplars: dict[str, str] | None = None) -> dict[str, Any]:
    """What a store is made of: the spec's draw (mlan.data.manifest.draw_hash), the teachers, the settings
    that change what they write, and (when known) the exemplar files' origins and hashes."""
    from mlan.data.manifest import draw_hash

    settings = spec.rationales.model_dump(mode="json", exclude=set(RUN_ONLY_SETTINGS))
    return {
        "spec": spec.name,
        "draw_hash": draw_hash(spec),
        "teacher": settings.pop("teacher"),
        "vision_teacher": settings.pop("vision_teacher"),
        "settings": settings,
        "exemplars": exemplars or {},
    }


def kept_rationales(spec: MixtureSpec) -> tuple[dict[str, str], dict[str, Any]]:
    """For `targets: rationale`: each row id's kept rationale, and what the manifest says of the store. A
    store of another spec's draw or other teachers is refused (one line); other settings may differ (a
    batch size, a device), since they are recorded in the store."""
    folder = store_dir(spec)
    if not (folder / META).is_file():
        raise MlanError(
            f"targets: rationale: no rationale store at {folder} (make it with `mlan rationales` on this spec, "
            "or set rationales.store)"
        )
    saved = check_identity(
        folder,
        identity(spec),
        keys=("draw_hash", "teacher", "vision_teacher"),
        hint="set rationales.teacher / vision_teacher to the store's, or rationales.store to the right store",
    )
    records = read_records(folder)
    kept = {rid: r["rationale"] for rid, r in records.items() if r["status"] == "kept"}
    status = Counter(r["status"] for r in records.values())
    return kept, {
        "store": str(folder),
        "store_hash": store_hash(records),
        "teacher": saved["teacher"],
        "vision_teacher": saved["vision_teacher"],
        "settings": saved["settings"],
        "records": {k: status[k] for k in STATUSES},
    }


def records_file(folder: Path, shard: tuple[int, int]) -> Path:
    return folder / f"records-{shard[0]}-of-{shard[1]}.jsonl"


def check_identity(
    folder: Path, identity: dict[str, Any], keys: Iterable[str] | None = None, hint: str = "use another --out"
) -> dict[str, Any]:
    """The store's recorded identity, refused in one line where it differs from `identity` (on `keys` only,
    when given): a store holds one spec's rows from one teacher with one set of settings."""
    meta = folder / META
    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MlanError(f"{meta}: invalid JSON ({e})") from None
    keys = list(keys) if keys is not None else sorted(set(saved) | set(identity))
    diff = [d for k in keys for d in diff_paths(saved.get(k), identity.get(k), f"{k}.")]
    if diff:
        raise MlanError(
            f"{folder}: a rationale store made with another spec or teacher ({', '.join(diff[:3])} differ: "
            f"{_shown(saved, diff[0])} there, {_shown(identity, diff[0])} asked); {hint}"
        )
    return saved


def _shown(d: dict[str, Any], path: str) -> str:
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    s = json.dumps(d)
    return s if len(s) <= 40 else s[:37] + "..."


def open_store(folder: Path, identity: dict[str, Any]) -> None:
    """Start a store, or check that an existing one was made with the same spec, teachers and settings.

    A store.json with no record beside it is replaced: a run that failed (say, on a bad row, whose message
    advises `bad_rows: skip`) or was killed before its first batch wrote it, and nothing in the store was
    made under it, so the spec or teachers may change; its empty records files go too (their shard count
    would otherwise bind the next run)."""
    if (folder / META).is_file():
        if _has_records(folder):
            check_identity(folder, identity)
            return
        for path, _ in shard_files(folder):
            path.unlink()
    elif folder.exists() and any(folder.iterdir()):
        raise MlanError(f"{folder}: exists and is not a rationale store (no {META}); use another --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / META, identity)


def _has_records(folder: Path) -> bool:
    """Whether any records file holds a complete line (a record; a killed write's partial line is none),
    read only as far as the first newline: a store of 80k records is not read twice for this."""
    for path, _ in shard_files(folder):
        with path.open("rb") as f:
            while chunk := f.read(1 << 16):
                if b"\n" in chunk:
                    return True
    return False


@contextlib.contextmanager
def scratch_folder(folder: Path) -> Iterator[Path]:
    """A folder in the store for one run's drawn images (the store's disk, which has room for them; the
    system's /tmp may not), removed when the run ends. Folders that killed runs left are removed first.

    The folder holds `.lock`, locked (flock) for the run's life: a kill releases the lock, so a later run
    tells a killed run's folder (lock free) from that of a shard running beside it on the same store
    (locked). The lock is taken under another name and the folder renamed after, so no run ever sees a
    scratch folder whose lock is not yet held."""
    remove_stale_scratch(folder)
    starting = Path(tempfile.mkdtemp(prefix=_STARTING, dir=folder))
    lock = (starting / _LOCK).open("w")
    try:
        _flock(lock, blocking=True)
        path = folder / (SCRATCH + starting.name.removeprefix(_STARTING))
        starting.rename(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)  # before the lock goes, so no sweep races this removal
    finally:
        lock.close()
        shutil.rmtree(starting, ignore_errors=True)  # only there when the rename did not happen


def remove_stale_scratch(folder: Path) -> list[Path]:
    """Remove the scratch folders of runs that are no longer running (killed: their lock is free; or
    made before scratch folders had a lock), keep those of runs still going. Returns what was removed."""
    removed = []
    for path in sorted(folder.glob(SCRATCH + "*")):
        if not path.is_dir():
            continue
        lock_file = path / _LOCK
        try:
            lock = lock_file.open("r+") if lock_file.is_file() else None
        except OSError:
            continue  # vanished meanwhile (its run just ended) or unreadable: not ours to judge
        try:
            if lock is not None and not _flock(lock, blocking=False):
                continue  # a run holds it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            if lock is not None:
                lock.close()
    if removed:
        log.info("removed %d scratch folder(s) that killed runs left in %s", len(removed), folder)
    return removed


def _flock(f, *, blocking: bool) -> bool:
    """An exclusive flock on `f`; False where another process holds it. Without fcntl (not POSIX) every
    folder reads as held: a folder of a running run is never removed, a killed run's stays."""
    try:
        import fcntl
    except ImportError:
        return blocking
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def shard_files(folder: Path) -> list[tuple[Path, tuple[int, int]]]:
    found = []
    for p in sorted(folder.glob("records-*.jsonl")):
        m = _RECORDS.fullmatch(p.name)
        if m:
            found.append((p, (int(m.group(1)), int(m.group(2)))))
    counts = {n for _, (_, n) in found}
    if len(counts) > 1:
        raise MlanError(f"{folder}: records of shards split {sorted(counts)} ways; a store takes one --shard count")
    return found


def check_shard(folder: Path, shard: tuple[int, int]) -> None:
    """A run may add shard i of N only where the store's other shards are of N too."""
    found = {n for _, (_, n) in shard_files(folder)}
    if found and shard[1] not in found:
        raise MlanError(
            f"--shard {shard[0]}/{shard[1]}: {folder} holds shards of {found.pop()}; rows would be split otherwise"
        )


def read_records(folder: Path, *, repair: bool = False) -> dict[str, dict[str, Any]]:
    """Every record of every shard by row id. A last line without its newline (a killed write) is left
    out, and cut from its file with `repair`; any other bad line stops with the file and line."""
    records: dict[str, dict[str, Any]] = {}
    for path, _ in shard_files(folder):
        data = path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data) and repair:
            with path.open("r+b") as f:
                f.truncate(complete)
        for n, line in enumerate(data[:complete].splitlines(), 1):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), str) or rec.get("status") not in STATUSES:
                    raise ValueError("not a rationale record")
            except ValueError as e:
                raise MlanError(
                    f"{path}: line {n}: corrupt record ({e}); remove the line to generate it again"
                ) from None
            if rec["id"] in records:
                raise MlanError(f"{path}: line {n}: row {rec['id']} is recorded twice")
            records[rec["id"]] = rec
    return records


class Appender:
    """Appends records to one shard file, flushed and synced after each batch."""

    def __init__(self, folder: Path, shard: tuple[int, int]):
        self.path = records_file(folder, shard)
        self.f = self.path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        self.f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def store_hash(records: dict[str, dict[str, Any]]) -> str:
    """SHA-256 over the records' ids, statuses and rationales in id order: what a mixture was joined from."""
    h = hashlib.sha256()
    for rid in sorted(records):
        r = records[rid]
        h.update(json.dumps([rid, r["status"], r["rationale"]], ensure_ascii=False).encode())
    return h.hexdigest()


def summarize(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rows per status per source, mean words of the kept rationales, teacher tokens, seconds."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows": 0, "status": Counter(), "words": 0})
    tokens = Counter()
    engines: Counter = Counter()
    retries = 0
    seconds = 0.0
    for r in records.values():
        engines[r.get("engine", "transformers")] += 1  # records before engines were recorded: transformers or vllm
        retries += (r.get("server") or {}).get("retries", 0)
        s = per[r["source"]]
        s["rows"] += 1
        s["status"][r["status"]] += 1
        if r["status"] == "kept":
            s["words"] += len(r["rationale"].split())
        tokens["prompt"] += r["prompt_tokens"]
        tokens["new"] += r["new_tokens"]
        seconds += r["seconds"]
    sources = {
        name: {
            "rows": s["rows"],
            "status": {k: s["status"][k] for k in STATUSES},
            "mean_words_kept": round(s["words"] / s["status"]["kept"], 1) if s["status"]["kept"] else None,
        }
        for name, s in sorted(per.items())
    }
    total = Counter()
    for s in sources.values():
        total.update(s["status"])
    return {
        "rows": len(records),
        "status": {k: total[k] for k in STATUSES},
        "sources": sources,
        "teacher_tokens": {"prompt": tokens["prompt"], "new": tokens["new"]},
        "generation_seconds": round(seconds, 2),
        "rows_per_second": round(len(records) / seconds, 3) if seconds else None,
        "new_tokens_per_second": round(tokens["new"] / seconds, 1) if seconds else None,
        "engines": dict(sorted(engines.items())),
        "retries": retries,
        "store_hash": store_hash(records),
    }


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (also what the CLI prints)."""
    head = "| source | rows | " + " | ".join(STATUSES) + " | mean words (kept) |"
    lines = [head, "|" + " --- |" * (len(STATUSES) + 3)]
    for name, s in summary["sources"].items():
        cells = [str(s["status"][k]) for k in STATUSES]
        words = "-" if s["mean_words_kept"] is None else f"{s['mean_words_kept']:.1f}"
        lines.append(f"| {name} | {s['rows']} | " + " | ".join(cells) + f" | {words} |")
    t = summary["teacher_tokens"]
    lines.append("")
    lines.append(
        f"{summary['rows']} rows; teacher tokens: {t['prompt']:,} prompt, {t['new']:,} generated; "
        f"{summary['generation_seconds']:.1f} s generating"
        + (
            f" ({summary['rows_per_second']:.2f} rows/s, {summary['new_tokens_per_second']:.1f} generated tokens/s)"
            if summary["generation_seconds"]
            else ""
        )
        + (f"; {summary['retries']} requests retried" if summary["retries"] else "")
    )
    return "\n".join(lines) + "\n"


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    from mlan.io import atomic_write_text

    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(folder / "summary.md", summary_table(summary))
