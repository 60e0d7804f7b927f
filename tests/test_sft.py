"""`mlan sft` on the tiny LLaVA: full, LoRA, QLoRA; outputs; loss masking; bad input.

Mixtures are written here in the mixture-folder contract (DatasetDict + manifest.json) from the
real ARC / CommonsenseQA slices and the bundled images, so these tests do not depend on the
mixture stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "mlan" / "assets" / "data" / "images"
LETTER_PROMPT = "Choose the best option from the choices provided and answer with its letter."


def _mc_rows(path: Path, source: str, n: int) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[:n]:
        r = json.loads(line)
        opts = "\n".join(f"{a} {t}" for a, t in zip(r["choices"]["label"], r["choices"]["text"], strict=True))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"{r['question']}\n{LETTER_PROMPT}\n{opts}"},
                    {"role": "assistant", "content": r["answerKey"]},
                ],
                "images": [],
                "modality": "language",
                "source": source,
                "id": f"{source}-{r['id']}",
            }
        )
    return rows


def _image_rows(n: int) -> list[dict]:
    files = sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    rows = []
    for i in range(n):
        f = files[i % len(files)]
        word = f.stem.split("_")[1]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "What does this picture show? Answer with one word."},
                    {"role": "assistant", "content": word},
                ],
                "images": [str(f)],
                "modality": "vision",
                "source": "bundled_images",
                "id": f"img-{i}",
            }
        )
    return rows


def make_mixture(out: Path, shared_data: Path, n_language: int = 48, n_vision: int = 16, n_long: int = 1) -> Path:
    """A small mixture folder: ARC-Easy + CommonsenseQA letter-answer rows, image rows, and
    `n_long` over-long rows of each modality (which training must drop and count)."""
    from datasets import Dataset, DatasetDict, Features, Image, List, Value

    lang = _mc_rows(shared_data / "arc_easy" / "train.jsonl", "arc_easy", n_language // 2)
    lang += _mc_rows(shared_data / "commonsense_qa" / "train.jsonl", "commonsense_qa", n_language - n_language // 2)
    vision = _image_rows(n_vision)
    long_rows = []
    for i in range(n_long):
        for base in (lang[i], vision[i]):
            row = json.loads(json.dumps(base))
            row["messages"][0]["content"] = ("Context: " + lang[i]["messages"][0]["content"] + "\n") * 40
            row["id"] += "-long"
            long_rows.append(row)
    features = Features(
        {
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "images": List(Image()),
            "modality": Value("string"),
            "source": Value("string"),
            "id": Value("string"),
        }
    )
    train = lang + vision + long_rows
    val = _mc_rows(shared_data / "arc_easy" / "validation.jsonl", "arc_easy", 8) + _image_rows(4)
    dd = DatasetDict(
        {"train": Dataset.from_list(train, features=features), "validation": Dataset.from_list(val, features=features)}
    )
    dd.save_to_disk(str(out))
    manifest = {
        "name": out.name,
        "covers_eval_tasks": ["arc_easy", "commonsense_qa"],
        "counts": {"language": len(lang), "vision": len(vision)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="module")
def mixture_dir(tmp_path_factory, shared_data) -> Path:
    return make_mixture(tmp_path_factory.mktemp("mix") / "mixture", shared_data)
