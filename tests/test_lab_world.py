"""The lab's toy world: seeded, exactly-checkable answers, held-out tests kept out of train."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from mlan.lab.world import (
    ATLAS,
    BASE_SCENE_QUESTIONS,
    COLOURS,
    SCENE_QUESTIONS,
    SCENE_VALUES,
    Scene,
    language_item,
    scene_base_item,
    scene_item,
    vision_chance,
    vocabulary,
    write_world,
)


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_answers_are_exact():
    rng = random.Random(7)
    for phrasing in (1, 2):
        q, a = language_item("add", phrasing, rng)
        x, y = (
            int(t.replace(" ", ""))
            for t in q.replace("what is", "").replace("?", "").replace("=", "").replace("plus", "+").split("+")
        )
        assert a == " ".join(reversed(str(x + y)))
        q, a = language_item("reverse", phrasing, rng)
        letters = q.replace("reverse", "").replace("write", "").replace("backwards .", "").replace("=", "").split()
        assert a.split() == letters[::-1]
        q, a = language_item("capital", phrasing, rng)
        assert a == ATLAS[next(w for w in q.split() if w in ATLAS)]
    assert scene_item(Scene("red", "circle", 2), "count", as_text=True) == (
        "scene 2 red circle . how many shapes are there ?",
        "2",
    )


def test_world_is_seeded_and_tests_are_held_out(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_world(a, seed=0, n_train=400, n_test=40, n_images=60)
    write_world(b, seed=0, n_train=400, n_test=40, n_images=60)
    write_world(c, seed=1, n_train=400, n_test=40, n_images=60)
    assert _digest(a) == _digest(b) != _digest(c)
    words = set(vocabulary())
    for phrasing in (1, 2):
        folder = a / f"language_p{phrasing}"
        train = {json.loads(x)["question"] for x in (folder / "train.jsonl").read_text().splitlines()}
        for task in ("add", "max", "reverse"):
            test = [json.loads(x) for x in (folder / f"test_{task}.jsonl").read_text().splitlines()]
            assert len(test) == 40 and not train & {r["question"] for r in test}
        for row in map(json.loads, (folder / "train.jsonl").read_text().splitlines()):
            assert set((row["question"] + " " + row["answer"]).split()) <= words
    scenes = [json.loads(x) for x in (a / "scenes" / "test.jsonl").read_text().splitlines()]
    assert len(scenes) == 40 and all((a / r["image"]).is_file() for r in scenes)


def _rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _answer_from_caption(caption: str, question: str) -> str:
    """Answer a scene question, in either phrasing, from the caption alone ("2 red circle"): what a
    model that reads the image as its caption has to do."""
    count, colour, shape = caption.split()
    if question in ("describe =",):
        return caption
    if question in ("count =", "how many shapes are there ?"):
        return count
    return colour if "colour" in question else shape


def test_image_questions_are_answerable_from_the_captions(tmp_path):
    write_world(tmp_path, seed=3, n_train=40, n_test=30, n_images=90)
    stage1 = _rows(tmp_path / "captions" / "train.jsonl")
    caption = {r["image"]: r["answer"] for r in stage1 if r["task"] == "describe"}
    every = {Scene(c, s, n).caption for c in SCENE_VALUES["colour"] for s in SCENE_VALUES["shape"] for n in (1, 2, 3)}
    assert len(caption) == 90 // 4 + 1 and set(caption.values()) <= every
    # every scene question, about an image or a scene given as text, in either phrasing, follows from the
    # caption; the images' captions are checked where stage 1 asks for them
    for folder, split in (("captions", "train"), ("scenes", "train"), ("scenes", "test"), ("scenes_p1_images", "test")):
        for r in _rows(tmp_path / folder / f"{split}.jsonl"):
            if r["image"] in caption:
                assert _answer_from_caption(caption[r["image"]], r["question"]) == r["answer"], r
    for folder in ("scenes_text", "scenes_p1"):
        for r in _rows(tmp_path / folder / "train.jsonl"):
            described, question = r["question"].split(" . ", 1)
            assert _answer_from_caption(described.removeprefix("scene "), question) == r["answer"], r
    # and the rendered image shows what its caption says (the colour of its pixels)
    from PIL import Image

    for image, text in list(caption.items())[:5]:
        pixels = {p for p in Image.open(tmp_path / image).convert("RGB").getdata() if p != (0, 0, 0)}
        assert pixels == {COLOURS[text.split()[1]]}


def test_language_and_vision_questions_share_their_phrasings(tmp_path):
    write_world(tmp_path, seed=0, n_train=120, n_test=24, n_images=60)

    def asked(rows: list[dict]) -> set[str]:
        """The questions with the scene given as text taken off: what is asked, whatever it is about."""
        return {r["question"].split(" . ", 1)[-1] for r in rows}

    vision = _rows(tmp_path / "scenes" / "test.jsonl")
    assert not any(r["question"].startswith("scene ") for r in vision) and all("image" in r for r in vision)
    # every vision test question, image aside, is asked about scenes as text in the stage-2 language data
    # (and the instruction phrasing is the one the language tasks' P2 uses: a question, not "X =")
    assert (
        asked(vision)
        == asked(_rows(tmp_path / "scenes_text" / "train.jsonl"))
        == {scene_item(Scene("red", "circle", 1), k, False)[0] for k in SCENE_QUESTIONS}
    )
    assert all(q.endswith("?") for q in asked(vision))
    assert not any(r["question"].endswith("=") for r in _rows(tmp_path / "language_p2" / "train.jsonl"))
    # stage 1 aligns the images on the base phrasing the pretrained LLM reads scenes as text in
    pretrain = asked(_rows(tmp_path / "scenes_p1" / "train.jsonl"))
    assert (
        asked(_rows(tmp_path / "captions" / "train.jsonl"))
        == pretrain
        == {scene_base_item(Scene("red", "circle", 1), k, False)[0] for k in BASE_SCENE_QUESTIONS}
    )
    assert not pretrain & asked(vision)  # the vision questions' phrasing is new to the pretrained LLM
    # the guessing level: one over the answers of each kind (4 colours, 3 shapes, 3 counts)
    assert vision_chance(tmp_path) == pytest.approx((1 / 4 + 1 / 3 + 1 / 3) / 3)
