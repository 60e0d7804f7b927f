"""A toy world, generated from a seed with no downloads, in which language skills and
vision skills can both be checked exactly.

Language tasks (each in a base phrasing P1 and an instruction phrasing P2):
- addition of two 2-digit numbers, the sum written least-significant digit first (a 2-layer
  model learns this; most-significant first it barely does),
- the larger of two numbers, reversal of a 3-5 letter list, capitals of invented countries.
Scenes: 32x32 images of 1-3 identical shapes (4 colours x 3 shapes). Like the language tasks, a scene
is asked about in two phrasings: the base phrasing ("colour =", "shape =", "count =", and
"describe =" for the caption "2 red circle"), which the pretrained LLM reads from scenes given as
text ("scene 2 red circle . colour =") and stage 1 aligns the images on; and the instruction phrasing
("what colour are the shapes ?"), which stage-2 language data teaches on scenes as text and vision
evaluation asks about images. Every answer is a fact the scene's caption carries.

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
# The base phrasing of scene questions (the pretrained LLM's own); `describe` asks for the caption.
BASE_SCENE_QUESTIONS = ("describe", *SCENE_QUESTIONS)
CAPTION_QUESTION = "describe ="


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

    def fact(self, kind: str) -> str:
        """The caption's word for one kind of question (colour, shape or count)."""
        return {"colour": self.colour, "shape": self.shape, "count": str(self.count)}[kind]


# The answers each kind of scene question can have (the guessing level of the vision test).
SCENE_VALUES = {"colour": sorted(COLOURS), "shape": list(SHAPES), "count": ["1", "2", "3"]}


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


def scene_text(scene: Scene) -> str:
    """A scene given as text, where an image would stand: what the pretrained LLM reads."""
    return f"scene {scene.caption} . "


def scene_base_item(scene: Scene, kind: str, as_text: bool) -> tuple[str, str]:
    """A scene question in the base phrasing (P1), the pretrained LLM's own: `describe =` (the caption;
    stage 1's question with the image) or `colour =` / `shape =` / `count =`."""
    prefix = scene_text(scene) if as_text else ""
    if kind == "describe":
        return f"{prefix}{CAPTION_QUESTION}", scene.caption
    return f"{prefix}{kind} =", scene.fact(kind)


def scene_item(scene: Scene, kind: str, as_text: bool) -> tuple[str, str]:
    """A scene question in the instruction phrasing (P2): what stage-2 language data asks about scenes
    as text and vision evaluation about images; as text, the scene is described before the question."""
    prefix = scene_text(scene) if as_text else ""
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
    for kind in BASE_SCENE_QUESTIONS:
        words |= set(" ".join(scene_base_item(scene, kind, True)).split())
    return sorted(words)


def vision_chance(world: str | Path) -> float:
    """The guessing level of the world's vision test: a model that answers every question with a
    word of the right kind (a colour, a shape, a count) without reading the image."""
    with open(Path(world) / "scenes" / "test.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return sum(1 / len(SCENE_VALUES[r["task"]]) for r in rows) / len(rows)


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

    Layout, each folder with `train.jsonl` and test files, images under `images/`; test items never
    appear in train:
    - `language_p1/`, `language_p2/`: the language tasks in each phrasing (also `train_<task>.jsonl`,
      and `test_<task>.jsonl` per task);
    - `scenes_p1/`: scenes as text in the base phrasing ("scene 2 red circle . colour =", "... describe =");
    - `scenes_text/`: scenes as text in the instruction phrasing; `scenes/`: the same about images;
    - `scenes_p1_images/test.jsonl`: base-phrasing questions about images (what a model reads from
      an image whatever the phrasing);
    - `captions/`: the base-phrasing questions, caption included, about images (stage 1).
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

    def scene_rows(pool, item, kinds: tuple[str, ...], as_text: bool, tag: str) -> list[dict]:
        """`item` (scene_item or scene_base_item) of each scene, the kinds in turn; with the image
        unless the scene is given as text."""
        rows = []
        for i, (scene, name) in enumerate(pool):
            kind = kinds[i % len(kinds)]
            q, a = item(scene, kind, as_text)
            row = {"id": f"{tag}-{i}", "question": q, "answer": a, "task": kind}
            if not as_text:
                row["image"] = name
            rows.append(row)
        return rows

    dump("scenes", "train", scene_rows(train_scenes, scene_item, SCENE_QUESTIONS, False, "scene"))
    dump("scenes", "test", scene_rows(test_scenes, scene_item, SCENE_QUESTIONS, False, "scene-test"))
    dump("scenes_text", "train", scene_rows(train_scenes, scene_item, SCENE_QUESTIONS, True, "scene-text"))
    dump("scenes_text", "test", scene_rows(test_scenes, scene_item, SCENE_QUESTIONS, True, "scene-text-test"))
    dump("scenes_p1", "train", scene_rows(train_scenes, scene_base_item, BASE_SCENE_QUESTIONS, True, "scene-p1"))
    dump(
        "scenes_p1_images",
        "test",
        scene_rows(test_scenes, scene_base_item, SCENE_QUESTIONS, False, "scene-p1-image-test"),
    )
    # Stage 1 aligns the images on every base-phrasing question, the caption among them: aligned on
    # the caption alone, the image tokens served `describe =` and nothing else (a base-phrasing
    # question about them scored at guessing level; with all four, 100%).
    dump("captions", "train", scene_rows(train_scenes, scene_base_item, BASE_SCENE_QUESTIONS, False, "caption"))
    with open(out / "index.json", "w", encoding="utf-8") as f:
        json.dump({"seed": seed, "files": index, "vocabulary": vocabulary()}, f, indent=2, sort_keys=True)
    return index
