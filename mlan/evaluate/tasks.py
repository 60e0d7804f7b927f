"""Task data: rows from the hub or local files, turned into uniform questions.

Every task reads rows in its hub dataset's own schema, wherever they come from: the hub
(`datasets.load_dataset`), a per-task file (`data_file`, or `--data TASK=PATH`), or
`<data_dir>/<task>/<split>.jsonl`. A local file that was asked for and is missing is an
error, never a silent fall-back to the hub. The schema readers of mlan.schemas (one per dataset)
turn rows into `Item`s: question, optional context, lettered choices, gold answer, image; each
`EvalItem` keeps its row too, for MLAN's prompt text. RACE rows (per article or per question) are
first turned into questions: the last of each article (`race_high`, as MLAN) or all (`race_high_all`).
"""

from __future__ import annotations

import ast
import io
import logging
from dataclasses import dataclass, fields
from pathlib import Path

from mlan import hub as hf_hub  # module access, so tests can replace hf_hub.require_hub
from mlan.config.suite import EvalSuite, HubData, SuiteTask
from mlan.errors import MlanError, first_line
from mlan.evaluate.extract import LETTERS as ANSWER_LETTERS
from mlan.paths import resolve_data_path
from mlan.schemas import LETTERS, SCHEMAS, Item, find_local, read_rows

log = logging.getLogger(__name__)

# Task format -> the schema its rows are in.
FORMATS = {
    "race_high": "race",
    "race_high_all": "race",
    "openbookqa": "openbookqa",
    "boolq": "boolq",
    "hellaswag": "hellaswag",
    "realworldqa": "realworldqa",
    "ai2d": "ai2d",
    "pope": "pope",
    "gqa": "gqa",
    "scienceqa": "scienceqa",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "commonsense_qa": "commonsense_qa",
    "mmlu": "mmlu",
    "qa": "qa_rows",
}
# Answers are extracted as the extractor's letters (A-J): at most that many choices.
MAX_CHOICES = len(ANSWER_LETTERS)


@dataclass
class EvalItem(Item):
    """A question to evaluate: the schema reader's item and the row it was read from (MLAN's prompt
    text is built from some rows' own fields, e.g. BoolQ's question as written, HellaSwag's ctx_a/ctx_b)."""

    row: dict | None = None


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
        # Files only: a task's data is fingerprinted by its file's bytes (save_to_disk folders serve mixtures).
        return find_local(base, task.hub.split, folders=False) or base / f"{task.hub.split}.jsonl"
    return None


def check_local_data(suite: EvalSuite, tasks: list[SuiteTask], data_dir, overrides) -> None:
    """Fail with one line before any model is loaded if a local file that was asked for is missing,
    or if a task needs the hub and the hub is out of reach."""
    for t in tasks:
        p = local_path(t, data_dir, overrides)
        if p is None:
            fix = f"pass --data-dir DIR with {t.name}/{t.hub.split}.jsonl, or --data {t.name}=FILE"
            hf_hub.require_hub(t.hub.path, f"dataset of task {t.name!r}", fix)
            continue
        if not p.is_file():
            how = "per-task data file" if (overrides and t.name in overrides) or t.data_file else "--data-dir"
            raise MlanError(
                f"{p}: missing local data for task {t.name!r} of suite {suite.name!r} ({how}; expected rows in the schema of {t.hub.path})"
            )


def load_task_data(task: SuiteTask, data_dir=None, overrides=None) -> TaskData:
    """All rows of a task, from its local file if one is set, else from the hub."""
    import hashlib

    p = local_path(task, data_dir, overrides)
    if p is not None:
        if not p.is_file():
            raise MlanError(f"{p}: missing local data for task {task.name!r}")
        rows = read_rows(p, what=f"data of task {task.name!r}")
        fp = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        return TaskData(rows=rows, source=str(p), base_dir=p.parent, fingerprint=fp)
    return _load_hub(task)


def _load_hub(task: SuiteTask) -> TaskData:
    hub = task.hub
    fix = f"pass --data-dir DIR with {task.name}/{hub.split}.jsonl, or --data {task.name}=FILE"
    hf_hub.require_hub(hub.path, f"dataset of task {task.name!r}", fix)
    ds = _open_hub(hub, task.name)
    rows = list(ds)
    if hub.images is not None:
        img = _open_hub(hub.images, task.name)
        by_id = {r["id"]: r["image"] for r in img}
        for r in rows:
            r["image"] = by_id.get(r.get(hub.image_key))
    fp = f"{hub.path}:{hub.name}:{hub.split}:{getattr(ds, '_fingerprint', '')}"
    at = f"@{hub.revision}" if hub.revision else ""
    return TaskData(
        rows=rows,
        source=f"hub:{hub.path}" + (f"/{hub.name}" if hub.name else "") + f"[{hub.split}]{at}",
        fingerprint=fp,
    )


def _open_hub(hub: HubData, task: str):
    """One hub split; a failure the user can fix (script-only repo, unknown id/config/split) is one line."""
    import datasets

    try:
        return datasets.load_dataset(hub.path, hub.name, split=hub.split, revision=hub.revision)
    except Exception as e:
        what = f"dataset of task {task!r}"
        script = hf_hub.script_repo_error(e, hub.path, what)
        if script is not None:
            raise script from None
        raise MlanError(
            f"{what}: cannot load hub dataset {hub.path!r} (config {hub.name}, split {hub.split}): {first_line(e)}"
        ) from None


def to_items(
    task: SuiteTask, data: TaskData, limit: int | None = None, image_dir: str | Path | None = None
) -> list[Item]:
    """Turn rows into items (filtered by image presence for vision tasks), at most `limit`, in file order."""
    fmt = task.format or task.name
    read = SCHEMAS[FORMATS[fmt]]
    items: list[Item] = []
    dirs = _image_dirs(task, data, image_dir)
    rows = race_questions(data.rows, last_only=fmt == "race_high", source=data.source) if fmt in RACE else data.rows
    for i, row in enumerate(rows):
        try:
            base = read(row)
            item = EvalItem(**{f.name: getattr(base, f.name) for f in fields(Item)}, row=row)
            _check_letters(item)
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise MlanError(
                f"{data.source}: row {i + 1}: does not match the schema of {task.hub.path} for task {task.name!r} ({type(e).__name__}: {e})"
            ) from None
        if item.id is None:
            item.id = str(i)
        has_image = item.image is not None
        if (has_image and not task.with_images) or (not has_image and not task.without_images):
            continue
        if has_image:
            item.image = _resolve_image(item.image, row, dirs, data.source, i)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


RACE = ("race_high", "race_high_all")


def race_questions(rows: list[dict], *, last_only: bool, source: str) -> list[dict]:
    """RACE rows as one question each (the `ehovy/race` schema the reader takes), in article order.

    Rows are `EleutherAI/race` articles (`problems`: the article's questions, a Python literal on the
    hub) or `ehovy/race` questions (grouped by article, in file order). `last_only` keeps the last
    question of each article: MLAN's `race_em` asks exactly that one
    (wang-research-lab/lm_eval@6f81a6b:lm_eval/tasks/race/preprocess_race.py:L8-9, L36-44), 1,045
    questions of RACE-High test instead of 3,498.
    """
    articles: dict[str, list[dict]] = {}
    for i, r in enumerate(rows):
        try:
            if "problems" in r:
                probs = r["problems"]
                probs = ast.literal_eval(probs) if isinstance(probs, str) else probs
                key = str(r.get("example_id") or f"article{i}")
                articles[key] = [{**p, "article": r["article"], "example_id": key} for p in probs]
            else:
                key = str(r.get("example_id") or r["article"])
                articles.setdefault(key, []).append(r)
        except (KeyError, ValueError, SyntaxError, TypeError) as e:
            raise MlanError(
                f"{source}: row {i + 1}: RACE rows need article/problems (EleutherAI/race) or "
                f"article/question/options/answer (ehovy/race) ({type(e).__name__}: {e})"
            ) from None
    out = []
    for key, qs in articles.items():
        picked = qs[-1:] if last_only else qs
        start = len(qs) - len(picked)
        # Per-question ids: the article's id and the question's place in it (0-based).
        out += [{**q, "example_id": f"{key}#{start + k}"} for k, q in enumerate(picked)]
    return out


def _check_letters(item: Item) -> None:
    # Rows the letters A-J cannot serve failed here before as well (an IndexError on the letters).
    beyond = len(item.answer) == 1 and item.answer in LETTERS[MAX_CHOICES:]
    if item.kind == "mc" and (len(item.choices or []) > MAX_CHOICES or beyond):
        raise IndexError(f"answers are read as letters A-J: at most {MAX_CHOICES} choices (answer {item.answer!r})")


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
    at = f"@{task.hub.revision}" if task.hub.revision else ""  # unset keeps the keys of earlier results
    return f"hub:{task.hub.path}:{task.hub.name}:{task.hub.split}{at}"
