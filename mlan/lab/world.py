"""A toy world, generated from a seed with no downloads, in which language skills and
vision skills can both be checked exactly.

Language tasks (each in a base phrasing P1 and an instruction phrasing P2):
- addition of two 2-digit numbers, the sum written least-significant digit first (a 2-layer
  model learns this; most-significant first it barely does),
- the larger of two numbers, reversal of a 3-5 letter list, capitals of invented countries.
Scenes: 32x32 images of 1-3 identical shapes (4 colours x 3 shapes) with questions on
colour, shape and count; the same questions also exist as text ("scene 2 red circle"),
and captions ("2 red circle") serve stage-1 alignment.

Rows are plain `{"id", "question", "answer"[, "image"]}` records, written as JSONL (+ PNG
files) so that mixture building and evaluation read them like any local dataset.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Invented countries and capitals: single words, so each is one token of the lab tokenizer.
_SYLLABLES = ("ka", "lo", "mi", "ru", "ze", "ta", "vo", "ni", "pa", "so", "di", "fe")
LANGUAGE_TASKS = ("add", "max", "reverse", "capital")
SCENE_QUESTIONS = ("colour", "shape", "count")


def _countries(n: int = 24) -> dict[str, str]:
    """A fixed atlas (independent of the seed, like world knowledge): country -> capital."""
    rng = random.Random(1234)
    names: list[str] = []
    while len(names) < 2 * n:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        if word not in names:
            names.append(word)
    return dict(zip(names[:n], names[n:], strict=True))


ATLAS = _countries()


def _digits(n: int) -> str:
    return " ".join(str(n))


def language_item(task: str, phrasing: int, rng: random.Random) -> tuple[str, str]:
    """One (question, answer) of a language task in phrasing 1 (base) or 2 (instruction)."""
    if task == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        answer = " ".join(reversed(str(a + b)))
        q = f"{_digits(a)} + {_digits(b)} =" if phrasing == 1 else f"what is {_digits(a)} plus {_digits(b)} ?"
    elif task == "max":
        a, b = rng.sample(range(10, 100), 2)
        answer = _digits(max(a, b))
        q = f"max {_digits(a)} {_digits(b)} =" if phrasing == 1 else f"which is larger , {_digits(a)} or {_digits(b)} ?"
    elif task == "reverse":
        letters = rng.sample(LETTERS, rng.randint(3, 5))
        answer = " ".join(reversed(letters))
        q = f"reverse {' '.join(letters)} =" if phrasing == 1 else f"write {' '.join(letters)} backwards ."
    elif task == "capital":
        country = rng.choice(sorted(ATLAS))
        answer = ATLAS[country]
        q = f"capital {country} =" if phrasing == 1 else f"what is the capital of {country} ?"
    else:
        raise ValueError(f"unknown language task {task!r}")
    return q, answer


@dataclass(frozen=True)
class Scene:
    """What a scene shows: `count` identical shapes of one colour."""

    colour: str
    shape: str
    count: int

    @property
    def caption(self) -> str:
        return f"{self.count} {self.colour} {self.shape}"


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(sorted(COLOURS)), rng.choice(SHAPES), rng.randint(1, 3))


def draw_scene(scene: Scene, rng: random.Random, size: int = 32):
    """Render a scene as a size x size RGB image: shapes at random non-overlapping cells."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    cell = size // 2
    for cx, cy in rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], scene.count):
        r = rng.randint(5, 7)
        x = cx * cell + cell // 2 + rng.randint(-1, 1)
        y = cy * cell + cell // 2 + rng.randint(-1, 1)
        colour = COLOURS[scene.colour]
        if scene.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif scene.shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return img


def scene_item(scene: Scene, kind: str, as_text: bool) -> tuple[str, str]:
    """A question about a scene; as text the scene is described in the question itself."""
    prefix = f"scene {scene.caption} . " if as_text else ""
    if kind == "colour":
        return f"{prefix}what colour are the shapes ?", scene.colour
    if kind == "shape":
        return f"{prefix}what shape are they ?", scene.shape
    if kind == "count":
        return f"{prefix}how many shapes are there ?", str(scene.count)
    raise ValueError(f"unknown scene question {kind!r}")


def vocabulary() -> list[str]:
    """Every word the world can produce (the lab's word-level tokenizer is built from it)."""
    words: set[str] = set(LETTERS) | {str(d) for d in range(10)} | set(COLOURS) | set(SHAPES)
    words |= set(ATLAS) | set(ATLAS.values()) | set(COUNT_WORDS.values())
    rng = random.Random(0)
    for task in LANGUAGE_TASKS:
        for phrasing in (1, 2):
            for _ in range(50):
                words |= set(" ".join(language_item(task, phrasing, rng)).split())
    scene = Scene("red", "circle", 2)
    for kind in SCENE_QUESTIONS:
        words |= set(" ".join(scene_item(scene, kind, True)).split())
    words |= {"describe", "the", "image", "."}
    return sorted(words)


CAPTION_QUESTION = "describe the image ."


def _language_rows(phrasing: int, rng: random.Random, n_train: int, n_test: int):
    """One phrasing's train rows and test rows per task. The test questions are drawn first, so that
    train can skip them."""
    seen: set[str] = set()
    tests: dict[str, list[dict]] = {}
    for task in LANGUAGE_TASKS:
        rows = []
        while len(rows) < n_test:
            q, a = language_item(task, phrasing, rng)
            # Capitals are a fixed fact table of 24 entries: they repeat in test and train
            # alike (the skill is recall); every other test question is unique and unseen.
            if task == "capital" or q not in seen:
                seen.add(q)
                rows.append({"id": f"{task}-p{phrasing}-test-{len(rows)}", "question": q, "answer": a, "task": task})
        tests[task] = rows
    train: list[dict] = []
    while len(train) < n_train:
        task = LANGUAGE_TASKS[len(train) % len(LANGUAGE_TASKS)]
        q, a = language_item(task, phrasing, rng)
        if q in seen and task != "capital":
            continue
        train.append({"id": f"{task}-p{phrasing}-{len(train)}", "question": q, "answer": a, "task": task})
    return train, tests


def write_world(out: str | Path, seed: int, n_train: int = 4000, n_test: int = 200, n_images: int = 2000) -> dict:
    """Write the world's datasets under `out` and return an index of what was written.

    Layout: `language_p1/`, `language_p2/`, `scenes_text/` (scene questions as text),
    `scenes/` (with images), `captions/` (with images), each with `train.jsonl` (language also
    `train_<task>.jsonl`) and, per task, `test_<task>.jsonl`; images under `images/`. Test items never appear in train.
    """
    out = Path(out)
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, int]] = {}

    def dump(folder: str, name: str, rows: list[dict]) -> None:
        (out / folder).mkdir(parents=True, exist_ok=True)
        with open(out / folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        index.setdefault(folder, {})[name] = len(rows)

    for phrasing in (1, 2):
        train, tests = _language_rows(phrasing, rng, n_train, n_test)
        dump(f"language_p{phrasing}", "train", train)
        # Per task too, so that a mixture can weight the tasks (pretraining gives addition a larger share).
        for task in LANGUAGE_TASKS:
            dump(f"language_p{phrasing}", f"train_{task}", [r for r in train if r["task"] == task])
        for task, rows in tests.items():
            dump(f"language_p{phrasing}", f"test_{task}", rows)

    scenes = []
    for i in range(n_images + n_test):
        scene = random_scene(rng)
        name = f"images/scene-{i:05d}.png"
        draw_scene(scene, rng).save(out / name)
        scenes.append((scene, name))
    train_scenes, test_scenes = scenes[:n_images], scenes[n_images:]
    kinds = SCENE_QUESTIONS

    def scene_rows(pool, as_text: bool, tag: str) -> list[dict]:
        rows = []
        for i, (scene, name) in enumerate(pool):
            q, a = scene_item(scene, kinds[i % len(kinds)], as_text)
            row = {"id": f"{tag}-{i}", "question": q, "answer": a, "task": kinds[i % len(kinds)]}
            if not as_text:
                row["image"] = name
            rows.append(row)
        return rows

    dump("scenes", "train", scene_rows(train_scenes, False, "scene"))
    dump("scenes", "test", scene_rows(test_scenes, False, "scene-test"))
    dump("scenes_text", "train", scene_rows(train_scenes, True, "scene-text"))
    dump("scenes_text", "test", scene_rows(test_scenes, True, "scene-text-test"))
    dump(
        "captions",
        "train",
        [
            {"id": f"caption-{i}", "question": CAPTION_QUESTION, "answer": s.caption, "image": n}
            for i, (s, n) in enumerate(train_scenes)
        ],
    )
    with open(out / "index.json", "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "files": index, "vocabulary": vocabulary()}, f, indent=2, sort_keys=True)
    return index
