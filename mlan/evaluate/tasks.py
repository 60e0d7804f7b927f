"""Task data: rows from the hub or local files, turned into uniform questions.

Every task reads rows in its hub dataset's own schema, wherever they come from: the hub
(`datasets.load_dataset`), a per-task file (`data_file`, or `--data TASK=PATH`), or
`<data_dir>/<task>/<split>.jsonl`. A local file that was asked for and is missing is an
error, never a silent fall-back to the hub. Adapters (one small function per dataset schema)
turn rows into `Item`s: question, optional context, lettered choices, gold answer, image.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlan.config.suite import EvalSuite, SuiteTask
from mlan.errors import MlanError
from mlan.paths import resolve_data_path

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


@dataclass
class Item:
    """One question in a uniform shape.

    `kind` is "mc" (gold `answer` is a letter of `choices`), "yesno" (gold "yes"/"no"),
    "open" (gold is a short text) or "exact" (gold is a short text matched whole: format `qa`). `image` is a PIL image, a file path, or None.
    """

    id: str
    question: str
    answer: str
    kind: str
    choices: list[str] | None = None
    context: str | None = None
    image: Any = None


@dataclass
class TaskData:
    """The rows of one task and where they came from (for results and cache keys)."""

    rows: list[dict]
    source: str
    base_dir: Path | None = None
    fingerprint: str = ""


# --------------------------------------------------------------------------- loading


def local_path(task: SuiteTask, data_dir: str | Path | None, overrides: dict[str, str] | None = None) -> Path | None:
    """The local file for a task, or None to use the hub. Per-task overrides win over `data_dir`."""
    overrides = overrides or {}
    if task.name in overrides:
        return resolve_data_path(overrides[task.name])
    if task.data_file:
        return resolve_data_path(task.data_file)
    if data_dir is not None:
        base = Path(data_dir).expanduser() / task.name
        for ext in (".jsonl", ".json", ".parquet"):
            if (base / f"{task.hub.split}{ext}").is_file():
                return base / f"{task.hub.split}{ext}"
        return base / f"{task.hub.split}.jsonl"
    return None


def check_local_data(suite: EvalSuite, tasks: list[SuiteTask], data_dir, overrides) -> None:
    """Fail with one line before any model is loaded if a local file that was asked for is missing,
    or if a task needs the hub and the hub is out of reach."""
    from mlan.hub import require_hub

    for t in tasks:
        p = local_path(t, data_dir, overrides)
        if p is None:
            fix = f"pass --data-dir DIR with {t.name}/{t.hub.split}.jsonl, or --data {t.name}=FILE"
            require_hub(t.hub.path, f"dataset of task {t.name!r}", fix)
            continue
        if not p.is_file():
            how = "per-task data file" if (overrides and t.name in overrides) or t.data_file else "--data-dir"
            raise MlanError(
                f"{p}: missing local data for task {t.name!r} of suite {suite.name!r} ({how}; expected rows in the schema of {t.hub.path})"
            )


def read_rows(path: Path) -> list[dict]:
    """Rows of a local JSONL, JSON (a list or {"data": [...]}) or Parquet file."""
    if path.suffix == ".parquet":
        import datasets

        return list(datasets.Dataset.from_parquet(str(path)))
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if isinstance(data, list):
                return data
        except json.JSONDecodeError:
            pass  # JSON lines in a .json file
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MlanError(f"{path}: line {i}: invalid JSON ({e.msg})") from None
    return rows


def load_task_data(task: SuiteTask, data_dir=None, overrides=None) -> TaskData:
    """All rows of a task, from its local file if one is set, else from the hub."""
    import hashlib

    p = local_path(task, data_dir, overrides)
    if p is not None:
        if not p.is_file():
            raise MlanError(f"{p}: missing local data for task {task.name!r}")
        rows = read_rows(p)
        fp = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        return TaskData(rows=rows, source=str(p), base_dir=p.parent, fingerprint=fp)
    return _load_hub(task)


def _load_hub(task: SuiteTask) -> TaskData:
    from mlan.hub import require_hub

    hub = task.hub
    fix = f"pass --data-dir DIR with {task.name}/{hub.split}.jsonl, or --data {task.name}=FILE"
    require_hub(hub.path, f"dataset of task {task.name!r}", fix)
    import datasets

    ds = datasets.load_dataset(hub.path, hub.name, split=hub.split)
    rows = list(ds)
    if hub.images is not None:
        img = datasets.load_dataset(hub.images.path, hub.images.name, split=hub.images.split)
        by_id = {r["id"]: r["image"] for r in img}
        for r in rows:
            r["image"] = by_id.get(r.get(hub.image_key))
    fp = f"{hub.path}:{hub.name}:{hub.split}:{getattr(ds, '_fingerprint', '')}"
    return TaskData(
        rows=rows, source=f"hub:{hub.path}" + (f"/{hub.name}" if hub.name else "") + f"[{hub.split}]", fingerprint=fp
    )


# --------------------------------------------------------------------------- adapters


def _letter_of(labels: list[str], key: str) -> str:
    key = str(key).strip()
    return LETTERS[labels.index(key)]


def _race(row, i) -> Item:
    return Item(
        id=str(row.get("example_id", i)),
        context=row["article"],
        question=row["question"],
        choices=list(row["options"]),
        answer=str(row["answer"]).strip(),
        kind="mc",
    )


def _arc_like(row, i, question_key: str = "question") -> Item:
    # ai2_arc, commonsense_qa and openbookqa (question_stem): choices{text,label}, answerKey (ARC labels may be 1-4).
    ch = row["choices"]
    return Item(
        id=str(row.get("id", i)),
        question=row[question_key],
        choices=list(ch["text"]),
        answer=_letter_of(list(ch["label"]), row["answerKey"]),
        kind="mc",
    )


def _openbookqa(row, i) -> Item:
    return _arc_like(row, i, question_key="question_stem")


def _mmlu(row, i) -> Item:
    return Item(
        id=str(i),
        question=row["question"].strip(),
        choices=list(row["choices"]),
        answer=LETTERS[int(row["answer"])],
        kind="mc",
    )


def _boolq(row, i) -> Item:
    q = row["question"].strip()
    q = q[:1].upper() + q[1:]
    if not q.endswith("?"):
        q += "?"
    ans = row["answer"]
    if isinstance(ans, str):
        ans = ans.strip().lower() in ("true", "yes", "1")
    return Item(
        id=str(row.get("idx", i)), context=row["passage"], question=q, answer="yes" if ans else "no", kind="yesno"
    )


def _hellaswag(row, i) -> Item:
    ctx = row.get("ctx") or (row.get("ctx_a", "") + " " + row.get("ctx_b", "")).strip()
    label = row.get("activity_label")
    ctx = re.sub(r"\[.*?\]", "", ctx).replace("  ", " ").strip()  # WikiHow markup, as lm-eval strips it
    return Item(
        id=str(row.get("ind", i)),
        context=f"{label}: {ctx}" if label else ctx,
        question="Which ending is the most likely continuation?",
        choices=[re.sub(r"\[.*?\]", "", e).strip() for e in row["endings"]],
        answer=LETTERS[int(row["label"])],
        kind="mc",
    )


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.:)]\s*(.+?)\s*$")


def _realworldqa(row, i) -> Item:
    # RealWorldQA puts the options (and an instruction) inside the question text.
    lines = row["question"].splitlines()
    opts, stem = [], []
    for line in lines:
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(opts)]:
            opts.append(m.group(2))
        elif not opts and not line.lower().startswith("please answer"):
            stem.append(line)
    answer = str(row["answer"]).strip()
    if opts and re.fullmatch(r"[A-J]\.?", answer):
        return Item(
            id=str(i),
            question="\n".join(stem).strip(),
            choices=opts,
            answer=answer[0],
            kind="mc",
            image=row.get("image"),
        )
    return Item(
        id=str(i), question="\n".join(stem).strip(), answer=answer, kind=_open_kind(answer), image=row.get("image")
    )


def _ai2d(row, i) -> Item:
    opts = list(row["options"])
    ans = row["answer"]
    idx = int(ans) if str(ans).strip().isdigit() else opts.index(ans)
    return Item(
        id=str(row.get("id", i)),
        question=row["question"],
        choices=opts,
        answer=LETTERS[idx],
        kind="mc",
        image=row.get("image"),
    )


def _pope(row, i) -> Item:
    # lmms-lab/POPE has question/answer; the original POPE files have text/label.
    q = row.get("question") or row["text"]
    a = str(row.get("answer") or row["label"]).strip().lower()
    return Item(id=str(row.get("question_id", i)), question=q, answer=a, kind="yesno", image=row.get("image"))


def _gqa(row, i) -> Item:
    a = str(row["answer"]).strip()
    return Item(
        id=str(row.get("id", i)), question=row["question"], answer=a, kind=_open_kind(a), image=row.get("image")
    )


def _scienceqa(row, i) -> Item:
    return Item(
        id=str(row.get("pid", i)),
        context=(row.get("hint") or "").strip() or None,
        question=row["question"],
        choices=list(row["choices"]),
        answer=LETTERS[int(row["answer"])],
        kind="mc",
        image=row.get("image"),
    )


def _qa(row, i) -> Item:
    # Generic short-answer rows {id, question, answer[, image][, choices]}: scored by exact match of the
    # whole normalised answer ("exact"), a multiple choice when `choices` is given, yes/no for yes/no answers.
    answer = str(row["answer"]).strip()
    choices = row.get("choices")
    if choices:
        choices = [str(c) for c in choices]
        if answer in LETTERS[: len(choices)]:
            letter = answer
        elif answer in choices:
            letter = LETTERS[choices.index(answer)]
        else:
            letter = LETTERS[int(answer)]
        return Item(id=str(row.get("id", i)), question=row["question"], choices=choices, answer=letter, kind="mc",
                    image=row.get("image"))  # fmt: skip
    kind = "yesno" if answer.lower() in ("yes", "no") else "exact"
    return Item(
        id=str(row.get("id", i)), question=str(row["question"]), answer=answer.lower() if kind == "yesno" else answer,
        kind=kind, image=row.get("image"),
    )  # fmt: skip


def _open_kind(answer: str) -> str:
    return "yesno" if answer.lower() in ("yes", "no") else "open"


ADAPTERS = {
    "race_high": _race,
    "openbookqa": _openbookqa,
    "boolq": _boolq,
    "hellaswag": _hellaswag,
    "realworldqa": _realworldqa,
    "ai2d": _ai2d,
    "pope": _pope,
    "gqa": _gqa,
    "scienceqa": _scienceqa,
    "arc_easy": _arc_like,
    "arc_challenge": _arc_like,
    "commonsense_qa": _arc_like,
    "mmlu": _mmlu,
    "qa": _qa,
}


def to_items(
    task: SuiteTask, data: TaskData, limit: int | None = None, image_dir: str | Path | None = None
) -> list[Item]:
    """Turn rows into items (filtered by image presence for vision tasks), at most `limit`, in file order."""
    adapter = ADAPTERS[task.format or task.name]
    items: list[Item] = []
    dirs = _image_dirs(task, data, image_dir)
    for i, row in enumerate(data.rows):
        try:
            item = adapter(row, i)
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise MlanError(
                f"{data.source}: row {i + 1}: does not match the schema of {task.hub.path} for task {task.name!r} ({type(e).__name__}: {e})"
            ) from None
        has_image = item.image is not None and item.image != ""
        if (has_image and not task.with_images) or (not has_image and not task.without_images):
            continue
        if has_image:
            item.image = _resolve_image(item.image, row, dirs, data.source, i)
        else:
            item.image = None
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def _image_dirs(task: SuiteTask, data: TaskData, image_dir) -> list[Path]:
    dirs = []
    for d in (image_dir, task.image_dir):
        if d:
            dirs.append(resolve_data_path(d))
    if data.base_dir is not None:
        dirs += [data.base_dir, data.base_dir / "images"]
    return dirs


def _resolve_image(value, row: dict, dirs: list[Path], source: str, i: int):
    """A PIL image, from an image object, HF image dict (bytes/path) or a file name."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"]))
        value = value.get("path")
    name = str(value)
    cands = [Path(name).expanduser()] if Path(name).is_absolute() else []
    for d in dirs:
        cands.append(d / name)
        if row.get("pid") is not None:
            cands.append(d / str(row["pid"]) / name)  # ScienceQA: <split>/<pid>/image.png
    for c in cands:
        if c.is_file():
            return Image.open(c)
    where = ", ".join(str(d) for d in dirs) or "(no image folder given)"
    raise MlanError(f"{source}: row {i + 1}: image {name!r} not found (looked in {where}; pass --image-dir)")


def data_fingerprint(task: SuiteTask, data_dir=None, overrides=None) -> str:
    """What identifies a task's data without loading it: a local file's hash, or the hub id and split."""
    import hashlib

    p = local_path(task, data_dir, overrides)
    if p is not None:
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else f"missing:{p}"
    return f"hub:{task.hub.path}:{task.hub.name}:{task.hub.split}"
