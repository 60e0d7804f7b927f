"""The lab's toy world: seeded, exactly-checkable answers, held-out tests kept out of train."""

from __future__ import annotations

import hashlib
import json
import random

from mlan.lab.world import ATLAS, Scene, language_item, scene_item, vocabulary, write_world


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
