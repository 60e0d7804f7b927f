"""Local evaluation data for tests: `<dir>/<task>/<split>.jsonl` for every task of the shipped
suites. Real slices where the repository bundles them (`mlan/assets/data`); rows written here in
the Hugging Face schemas where no redistributable copy exists (RACE, HellaSwag, RealWorldQA,
AI2D, GQA, ScienceQA). Nothing is read from outside the repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BUNDLED_DATA = Path(__file__).resolve().parents[1] / "mlan" / "assets" / "data"
BUNDLED_IMAGES = BUNDLED_DATA / "images"

# RACE and HellaSwag have no redistributable slices: a few rows written here in their HF schemas.
RACE_ROWS = [
    {
        "example_id": "high1.txt",
        "article": "Tom went to the market on Monday. He bought apples and bread, then walked home in the rain.",
        "question": "When did Tom go to the market?",
        "options": ["Sunday", "Monday", "Friday", "Tuesday"],
        "answer": "B",
    },
    {
        "example_id": "high1.txt",
        "article": "Tom went to the market on Monday. He bought apples and bread, then walked home in the rain.",
        "question": "What was the weather like when Tom walked home?",
        "options": ["rainy", "sunny", "snowy", "windy"],
        "answer": "A",
    },
    {
        "example_id": "high2.txt",
        "article": "The library opens at nine and closes at five. Students may borrow four books at a time.",
        "question": "How many books can a student borrow at a time?",
        "options": ["two", "three", "five", "four"],
        "answer": "D",
    },
    {
        "example_id": "high3.txt",
        "article": "Mary planted tomatoes in spring. By summer the plants were tall and covered in red fruit.",
        "question": "What did Mary plant?",
        "options": ["roses", "potatoes", "tomatoes", "beans"],
        "answer": "C",
    },
]
HELLASWAG_ROWS = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
        "split": "val",
        "split_type": "zeroshot",
        "label": "3",
    },
    {
        "ind": 106,
        "activity_label": "Canoeing",
        "ctx_a": "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, with other individuals visible in the background.",
        "ctx_b": "the child and a different man",
        "ctx": "Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, with other individuals visible in the background. the child and a different man",
        "endings": [
            "are then shown paddling down a river in a boat while a woman talks.",
            "are driving the canoe, they go down the river flowing side to side.",
            "sit in a canoe while the man paddles.",
            "walking go down the rapids, while the man in his helicopter almost falls and goes out of canoehood.",
        ],
        "source_id": "activitynet~v_-xQvJmC2jhk",
        "split": "val",
        "split_type": "indomain",
        "label": "2",
    },
]
# Vision rows in the schemas of xai-org/RealworldQA, lmms-lab/ai2d and lmms-lab/GQA, on bundled images.
REALWORLDQA_ROWS = [
    {
        "image": "skimage_rocket.jpg",
        "question": "What is in the sky?\nA. A rocket\nB. A bird\nC. A kite\nPlease answer directly with only the letter of the correct option and nothing else.",
        "answer": "A",
    },
    {
        "image": "llava_waterview.jpg",
        "question": "Is there water in the picture?\nA. Yes\nB. No\nPlease answer directly with only the letter of the correct option and nothing else.",
        "answer": "A",
    },
    {
        "image": "skimage_coins.png",
        "question": "How many rows of coins are there? Please answer directly with a single number.",
        "answer": "4",
    },
]
AI2D_ROWS = [
    {
        "question": "What does the picture show?",
        "options": ["coins", "a cat", "a tree", "a car"],
        "answer": "0",
        "image": "skimage_coins.png",
    },
    {
        "question": "Which object is in the image?",
        "options": ["a boat", "a clock", "bricks", "a dog"],
        "answer": "2",
        "image": "skimage_brick.png",
    },
    {
        "question": "What kind of image is this?",
        "options": ["text", "a map", "a cell", "gravel"],
        "answer": "2",
        "image": "skimage_cell.png",
    },
]
GQA_ROWS = [
    {"id": "201307251", "imageId": "skimage_camera.png", "question": "Who is holding the camera?", "answer": "man"},
    {
        "id": "201640614",
        "imageId": "skimage_clock_motion.png",
        "question": "What is the round object?",
        "answer": "clock",
    },
    {"id": "202225914", "imageId": "llava_extreme_ironing.jpg", "question": "Is the man ironing?", "answer": "yes"},
]


# ScienceQA is CC BY-NC-SA 4.0: none of its rows are copied here. The questions below were written
# for mlan's tests, in the schema of `derek-thomas/ScienceQA` (question, choices, answer as the
# index of the right choice, hint, image, task, grade, subject, topic, category, skill, lecture,
# solution) plus the `pid` and `split` of the official problems.json; `image` is a file name, and
# the image lies at `<image dir>/<pid>/image.png` as in the official release.
def _sqa(pid: int, question: str, choices: list[str], answer: int, **fields) -> dict:
    row = {"pid": str(pid), "question": question, "choices": choices, "answer": answer, "hint": "", "image": None}
    row |= {"task": "closed choice", "grade": "grade3", "subject": "natural science", "topic": "", "category": ""}
    row |= {"skill": "", "lecture": "", "solution": ""}
    row |= fields
    return {**row, "split": "test"}


# Rows with an image: pid -> (bundled image shown, row).
_SQA_IMAGE_ROWS = {
    "9001": ("skimage_coins.png", _sqa(
        9001, "What are the round objects in the picture?", ["buttons", "coins", "cookies"], 1,
        subject="social science", topic="economics", category="Money", skill="Identify coins",
        solution="The round metal objects with pictures stamped on them are coins.",
    )),
    "9002": ("skimage_rocket.jpg", _sqa(
        9002, "Which force pulls the rocket back toward Earth?", ["gravity", "magnetism", "friction"], 0,
        hint="The picture shows a rocket lifting off from a launch pad.", topic="physics", category="Forces",
        skill="Identify forces", lecture="A force is a push or a pull.",
        solution="Gravity pulls every object toward the center of Earth, so gravity pulls the rocket back.",
    )),
    "9003": ("llava_waterview.jpg", _sqa(
        9003, "What is the large area of water in this picture?", ["a desert", "a glacier", "a lake"], 2,
        subject="social science", topic="geography", category="Landforms",
        skill="Identify landforms and bodies of water",
        solution="A lake is a large area of still water surrounded by land.",
    )),
    "9004": ("skimage_clock_motion.png", _sqa(
        9004, "What does this object measure?", ["weight", "time", "temperature"], 1, grade="grade2",
        topic="units and measurement", category="Measurement", skill="Choose the right tool to measure",
        solution="The object is a clock. Its hands show the hours and minutes, so it measures time.",
    )),
}  # fmt: skip
_STATES = [  # (thing, state, hint)
    ("a wooden spoon", "solid", ""),
    ("the steam above a pot of soup", "gas", "Omar heats a pot of soup on the stove."),
    ("apple juice in a glass", "liquid", ""),
    ("the helium inside a party balloon", "gas", ""),
    ("a glass marble", "solid", "Ines rolls a marble across the floor."),
    ("olive oil in a bottle", "liquid", ""),
]
_STATE_WHY = {
    "solid": "keeps its own shape, so it is a solid",
    "liquid": "takes the shape of its container, so it is a liquid",
    "gas": "spreads out to fill the space around it, so it is a gas",
}
_CHANGES = [  # (change, chemical?)
    ("frying an egg", True),
    ("folding a paper airplane", False),
    ("an iron nail rusting in the rain", True),
    ("an ice pop melting in the sun", False),
    ("baking bread", True),
    ("cutting a sheet of paper in half", False),
]
_ANIMALS = [  # (group, choices, answer)
    ("a mammal", ["trout", "goat", "lizard"], 1),
    ("a bird", ["owl", "frog", "shark"], 0),
    ("a fish", ["turtle", "bat", "tuna"], 2),
    ("a reptile", ["crocodile", "robin", "toad"], 0),
    ("an amphibian", ["eel", "salamander", "horse"], 1),
    ("an insect", ["spider", "worm", "beetle"], 2),
]
_LANGUAGE = "language science"
_SOCIAL = "social science"
_SQA_OTHER = [
    _sqa(
        9119, "Which word is a verb?", ["tall", "run", "window"], 1, grade="grade2", subject=_LANGUAGE,
        topic="grammar", category="Parts of speech", skill="Identify verbs",
        solution="Run names an action, so it is a verb. Tall describes a thing and window names one.",
    ),
    _sqa(
        9120, "Which word would come first in alphabetical order?", ["pencil", "lamp", "garden"], 2, grade="grade2",
        subject=_LANGUAGE, topic="reference-skills", category="Alphabetical order",
        skill="Put words in alphabetical order",
        solution="Compare the first letters: g comes before l and p in the alphabet, so garden comes first.",
    ),
    _sqa(
        9121, "In which tense is this sentence written?\nThe children painted the fence yesterday.",
        ["future tense", "past tense", "present tense"], 1, subject=_LANGUAGE, topic="verbs",
        category="Verb tense", skill="Identify the tense of a sentence",
        solution="Painted ends in -ed and tells about something that already happened, so it is past tense.",
    ),
    _sqa(
        9122, "Which ocean is the largest?", ["Atlantic Ocean", "Indian Ocean", "Pacific Ocean", "Arctic Ocean"], 2,
        grade="grade4", subject=_SOCIAL, topic="geography", category="Oceans and continents",
        skill="Identify oceans", solution="The Pacific Ocean covers more of Earth than any other ocean.",
    ),
    _sqa(
        9123, "Which of these is a continent?", ["Brazil", "Africa", "Lake Superior"], 1, subject=_SOCIAL,
        topic="geography", category="Oceans and continents", skill="Identify continents",
        solution="Africa is one of the seven continents. Brazil is a country and Lake Superior is a lake.",
    ),
    _sqa(
        9124, "Is a haircut a good or a service?", ["a good", "a service"], 1,
        hint="Lena pays a barber to cut her hair.", grade="grade2", subject=_SOCIAL, topic="economics", category="Goods and services",
        skill="Identify goods and services", solution="A haircut is a job that someone does for you: a service.",
    ),
]  # fmt: skip


def _scienceqa_rows() -> list[dict]:
    rows = [{**row, "image": "image.png"} for _, row in _SQA_IMAGE_ROWS.values()]
    states = ["a solid", "a liquid", "a gas"]
    for k, (thing, state, hint) in enumerate(_STATES):
        rows.append(_sqa(
            9101 + k, f"Is {thing} a solid, a liquid, or a gas?", states, states.index(f"a {state}"), hint=hint,
            topic="physics", category="States of matter", skill="Identify solids, liquids, and gases",
            lecture="Matter can be a solid, a liquid, or a gas. A solid keeps its own shape. A liquid takes the "
            "shape of its container. A gas spreads out to fill all the space it is in.",
            solution=f"{thing[0].upper()}{thing[1:]} {_STATE_WHY[state]}.",
        ))  # fmt: skip
    changes = ["a physical change", "a chemical change"]
    for k, (change, chemical) in enumerate(_CHANGES):
        why = "forms a different type of matter" if chemical else "changes how matter looks, but no new matter forms"
        rows.append(_sqa(
            9107 + k, f"What kind of change is {change}?", changes, int(chemical), grade="grade4",
            topic="chemistry", category="Physical and chemical change", skill="Identify physical and chemical changes",
            lecture="In a chemical change, a different type of matter forms. In a physical change, the type of "
            "matter stays the same.",
            solution=f"{change[0].upper()}{change[1:]} {why}. So it is {changes[int(chemical)]}.",
        ))  # fmt: skip
    for k, (group, choices, answer) in enumerate(_ANIMALS):
        rows.append(_sqa(
            9113 + k, f"Which animal is {group}?", choices, answer, grade="grade2", topic="biology",
            category="Classification", skill="Identify groups of animals",
            lecture="Scientists sort animals into groups by the traits they share.",
            solution=f"The {choices[answer]} is {group}. The other animals belong to other groups.",
        ))  # fmt: skip
    return rows + _SQA_OTHER


# 4 rows with an image first, then 24 without: ScienceQA's test split has both kinds.
SCIENCEQA_ROWS = _scienceqa_rows()


def write_scienceqa(path: Path, images: Path) -> Path:
    """The ScienceQA-schema rows at `path` (jsonl), their images at `<images>/<pid>/image.png`."""
    from PIL import Image

    _write_jsonl(path, SCIENCEQA_ROWS)
    for pid, (name, _) in _SQA_IMAGE_ROWS.items():
        (images / pid).mkdir(parents=True, exist_ok=True)
        Image.open(BUNDLED_IMAGES / name).convert("RGB").save(images / pid / "image.png")
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_eval_data(d: Path, shared_data: Path = BUNDLED_DATA) -> Path:
    """`<dir>/<task>/<split>.jsonl` for every task of the shipped suites: real slices bundled in
    the repository (`shared_data`) where they exist, rows written in the HF schema where they do
    not, and images for the vision rows."""
    from PIL import Image

    copies = {
        "gsm8k/test": "gsm8k/test",
        "gsm8k/train": "gsm8k/train",
        "commonsense_qa/validation": "commonsense_qa/validation",
        "arc_easy/test": "arc_easy/test",
        "arc_challenge/test": "arc_challenge/test",
        "mmlu/test": "mmlu/test",
        "openbookqa/test": "openbookqa/test",
        "boolq/validation": "boolq/validation",
        "pope/test": "pope_coco/random",
    }
    for dst, src in copies.items():
        (d / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / f"{src}.jsonl", d / f"{dst}.jsonl")
    _write_jsonl(d / "race_high" / "test.jsonl", RACE_ROWS)
    _write_jsonl(d / "hellaswag" / "validation.jsonl", HELLASWAG_ROWS)
    _write_jsonl(d / "realworldqa" / "test.jsonl", REALWORLDQA_ROWS)
    _write_jsonl(d / "ai2d" / "test.jsonl", AI2D_ROWS)
    _write_jsonl(d / "gqa" / "testdev.jsonl", GQA_ROWS)
    images = d / "images"
    images.mkdir()
    for f in BUNDLED_IMAGES.iterdir():
        shutil.copy(f, images / f.name)
    # POPE rows name COCO images that are not redistributed: stand-ins with those names.
    pope = [json.loads(x) for x in (d / "pope" / "test.jsonl").read_text().splitlines()]
    for k, name in enumerate(dict.fromkeys(r["image"] for r in pope[:40])):
        Image.new("RGB", (48, 40), (40 * k % 255, 90, 160)).save(images / name)
    # ScienceQA (CC BY-NC-SA 4.0, not redistributable): rows written in its schema, with and without images.
    write_scienceqa(d / "scienceqa" / "test.jsonl", images)
    return d


def write_standin_rows(d: Path, n: int = 100, shared_data: Path = BUNDLED_DATA) -> Path:
    """`<dir>/race_high/test.jsonl` and `<dir>/hellaswag/validation.jsonl`: `n` questions each in those
    datasets' schemas, made of the bundled CosmosQA rows (a passage, a question, four answers), since RACE and
    HellaSwag have no redistributable slices. RACE: the passage as the article, its questions in file order (so
    lm-eval's `race` puts the earlier ones, answered, in the context of the last); HellaSwag: the passage and the
    question as the context, the answers as endings. Their shapes (a long shared context, several choices of
    several tokens) are what the evaluation backends are measured on; their scores mean nothing."""
    rows = [json.loads(x) for x in (shared_data / "cosmos_qa" / "validation.jsonl").read_text().splitlines()]
    race, articles = [], []
    for r in rows:
        if r["context"] not in articles:
            if len(articles) == n:
                break
            articles.append(r["context"])
        options = [r[f"answer{k}"] for k in range(4)]
        race.append({"example_id": f"cosmos{articles.index(r['context'])}", "article": r["context"],
                     "question": r["question"], "options": options, "answer": "ABCD"[r["label"]]})  # fmt: skip
    hellaswag = [
        {"ind": i, "activity_label": "Blog", "ctx_a": r["context"], "ctx_b": r["question"],
         "ctx": f"{r['context']} {r['question']}", "endings": [r[f"answer{k}"] for k in range(4)],
         "source_id": r["id"], "split": "val", "split_type": "indomain", "label": str(r["label"])}
        for i, r in enumerate(rows[:n])
    ]  # fmt: skip
    _write_jsonl(d / "race_high" / "test.jsonl", race)
    _write_jsonl(d / "hellaswag" / "validation.jsonl", hellaswag)
    return d
