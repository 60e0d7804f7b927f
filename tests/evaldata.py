"""Local evaluation data for tests: `<dir>/<task>/<split>.jsonl` for every task of the shipped
suites. Real slices where they exist (../shared/data); rows written here in the Hugging Face
schemas where no redistributable copy exists (RACE, HellaSwag, RealWorldQA, AI2D, GQA)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BUNDLED_IMAGES = Path(__file__).resolve().parents[1] / "mlan" / "assets" / "data" / "images"

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


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_eval_data(d: Path, shared_data: Path) -> Path:
    """`<dir>/<task>/<split>.jsonl` for every task of the shipped suites: real slices where they
    exist, rows written in the HF schema where they do not, and images for the vision rows."""
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
    # ScienceQA: the real text-only test rows plus real image-row metadata with stand-in images.
    sqa = [json.loads(x) for x in (shared_data / "scienceqa" / "test.jsonl").read_text().splitlines()]
    meta = [json.loads(x) for x in (shared_data / "scienceqa" / "image_rows_metadata.jsonl").read_text().splitlines()]
    img_rows = [r for r in meta if r["split"] == "test"][:4]
    for r in img_rows:
        (images / r["pid"]).mkdir()
        Image.new("RGB", (36, 36), (200, 30, int(r["pid"]) % 255)).save(images / r["pid"] / r["image"])
    _write_jsonl(d / "scienceqa" / "test.jsonl", [*img_rows, *sqa[:4]])
    return d
