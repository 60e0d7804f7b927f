"""Benchmark: build an 80k MLAN_v-style mixture (70k language + 10k vision) from generated
sources of realistic size, and compare with a naive build measured in the same run.

Sources are written to a temporary folder as JSONL in the Hugging Face schemas, with the row
counts of the real train splits (SQuAD 87,599, CosmosQA 25,262, CommonsenseQA 9,741, ...) and
JPEG files for the vision rows (several questions per image, as in VQAv2). Each build runs in a
fresh child process so its peak memory (max RSS) is its own.

  mlan:  `mlan.data.mixture.build_mixture` (memory-mapped sources, images streamed as bytes,
         dedup, contamination check against 5k evaluation questions, image verification)
  naive: read every source into Python lists, sample, render with the same templates, count
         tokens, `Dataset.from_list` with the image bytes, `save_to_disk` (no hygiene, no checks)

Run: python benchmarks/mixture_build.py [--scale 1.0] [--images 3000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "by",
    "with",
    "as",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "what",
    "all",
    "when",
    "there",
    "can",
    "who",
    "more",
    "one",
    "about",
    "would",
    "their",
    "so",
    "if",
    "out",
    "up",
    "into",
    "its",
    "time",
    "only",
    "people",
    "new",
    "city",
    "river",
    "war",
    "school",
    "water",
    "light",
    "music",
    "king",
    "game",
    "team",
    "world",
    "power",
    "energy",
    "cell",
    "plant",
    "animal",
    "body",
    "rock",
    "star",
]

# Rows in the real train splits of MLAN's sources.
LANGUAGE_SIZES = {
    "squad": 87599,
    "cosmos_qa": 25262,
    "commonsense_qa": 9741,
    "strategyqa": 2290,
    "arc_easy": 2251,
    "arc_challenge": 1119,
}


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n)).capitalize()


_CONTEXTS: dict[str, list[str]] = {}


def context(name: str, n_rows: int, rng: random.Random, sentences: int) -> str:
    """Passages shared by about five questions each, as in SQuAD and CosmosQA."""
    pool = _CONTEXTS.setdefault(name, [])
    if len(pool) < max(1, n_rows // 5):
        pool.append(". ".join(sentence(rng, 18) for _ in range(sentences)))
        return pool[-1]
    return rng.choice(pool)


def choices(rng: random.Random, labels: str) -> dict:
    return {"label": list(labels), "text": [sentence(rng, rng.randint(1, 4)) for _ in labels]}


def language_row(name: str, i: int, rng: random.Random) -> dict:
    q = sentence(rng, rng.randint(8, 18)) + "?"
    if name == "squad":
        ctx = context(name, LANGUAGE_SIZES[name], rng, 7)
        return {
            "id": f"s{i}",
            "title": "T",
            "context": ctx,
            "question": q,
            "answers": {"text": [sentence(rng, 2)], "answer_start": [0]},
        }
    if name == "cosmos_qa":
        row = {
            "id": f"c{i}",
            "context": context(name, LANGUAGE_SIZES[name], rng, 4),
            "question": q,
            "label": rng.randrange(4),
        }
        row.update({f"answer{k}": sentence(rng, rng.randint(4, 10)) for k in range(4)})
        return row
    if name == "strategyqa":
        return {
            "qid": f"q{i}",
            "term": "x",
            "description": "y",
            "question": q,
            "answer": rng.random() < 0.5,
            "facts": [sentence(rng, 12) for _ in range(3)],
            "decomposition": [],
        }
    labels = "ABCDE" if name == "commonsense_qa" else "ABCD"
    return {"id": f"{name}{i}", "question": q, "choices": choices(rng, labels), "answerKey": rng.choice(labels)}


def generate(root: Path, n_images: int, vqa_rows: int, aok_rows: int) -> dict[str, Path]:
    """Write the generated sources; returns name -> JSONL path."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    paths = {}
    for name, n in LANGUAGE_SIZES.items():
        paths[name] = root / f"{name}.jsonl"
        with paths[name].open("w") as f:
            for i in range(n):
                f.write(json.dumps(language_row(name, i, rng)) + "\n")
    img_dir = root / "images"
    img_dir.mkdir()
    for k in range(n_images):
        # COCO-like size; shapes on a gradient compress like photos (~20-40 KB), noise would not.
        im = Image.linear_gradient("L").resize((480, 360)).convert("RGB")
        d = ImageDraw.Draw(im)
        for _ in range(12):
            x, y = rng.randrange(480), rng.randrange(360)
            d.ellipse(
                (x, y, x + rng.randrange(20, 120), y + rng.randrange(20, 120)),
                fill=tuple(rng.randrange(256) for _ in range(3)),
            )
        im.save(img_dir / f"COCO_{k:012d}.jpg", quality=85)
    paths["vqav2"] = root / "vqav2.jsonl"
    with paths["vqav2"].open("w") as f:
        for i in range(vqa_rows):
            answers = [rng.choice(["yes", "no", "2", "red", "dog"]) for _ in range(10)]
            f.write(
                json.dumps(
                    {
                        "question_id": i,
                        "question": sentence(rng, rng.randint(4, 9)) + "?",
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": j} for j, a in enumerate(answers)
                        ],
                        "multiple_choice_answer": answers[0],
                        "image": f"COCO_{i % n_images:012d}.jpg",
                    }
                )
                + "\n"
            )
    paths["aokvqa"] = root / "aokvqa.jsonl"
    with paths["aokvqa"].open("w") as f:
        for i in range(aok_rows):
            f.write(
                json.dumps(
                    {
                        "question_id": f"a{i}",
                        "question": sentence(rng, rng.randint(5, 10)) + "?",
                        "choices": [sentence(rng, 2) for _ in range(4)],
                        "correct_choice_idx": rng.randrange(4),
                        "direct_answers": [],
                        "rationales": [sentence(rng, 12)],
                        "image": f"COCO_{(i * 7) % n_images:012d}.jpg",
                    }
                )
                + "\n"
            )
    paths["eval"] = root / "eval.jsonl"
    with paths["eval"].open("w") as f:
        for _ in range(5000):
            f.write(json.dumps({"question": sentence(rng, rng.randint(8, 18)) + "?"}) + "\n")
    return paths


def spec_dict(paths: dict[str, Path], language: int, vision: int) -> dict:
    adapters = {"arc_easy": "arc", "arc_challenge": "arc"}
    sources = [{"name": n, "dataset": str(paths[n]), "adapter": adapters.get(n, n)} for n in LANGUAGE_SIZES]
    img_root = str(paths["vqav2"].parent / "images")
    sources += [
        {"name": n, "dataset": str(paths[n]), "adapter": n, "image_root": img_root} for n in ("vqav2", "aokvqa")
    ]
    return {
        "name": "bench",
        "seed": 42,
        "modality_split": {"language": language, "vision": vision},
        "validation": 0,
        "sources": sources,
        "contamination": {"evals": [{"task": "boolq", "dataset": str(paths["eval"])}]},
    }


def run_mlan(spec: dict, out: str, conn) -> None:
    from mlan.config.mixture import MixtureSpec
    from mlan.data.mixture import build_mixture

    t0 = time.perf_counter()
    result = build_mixture(MixtureSpec.model_validate(spec), out)
    conn.send((time.perf_counter() - t0, result.train_rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def run_naive(spec: dict, out: str, conn) -> None:
    """The obvious build: whole sources as Python lists."""
    import datasets

    from mlan.config.mixture import MixtureSpec
    from mlan.data.adapters import ADAPTER_FUNCS
    from mlan.data.mixture import _tiny_tokenizer, apportion, features
    from mlan.data.templates import render

    t0 = time.perf_counter()
    cfg = MixtureSpec.model_validate(spec)
    rows = []
    for modality in ("language", "vision"):
        srcs = [s for s in cfg.sources if s.modality == modality]
        data = {s.name: [json.loads(line) for line in Path(s.dataset).read_text().splitlines()] for s in srcs}
        counts = apportion(getattr(cfg.modality_split, modality), [len(data[s.name]) for s in srcs])
        for s, n in zip(srcs, counts, strict=True):
            rng = random.Random(s.name)
            for row in rng.sample(data[s.name], n):
                item = ADAPTER_FUNCS[s.adapter](row, s)
                messages, _ = render(item, rng, 0.0)
                imgs = [{"bytes": (Path(s.image_root) / p).read_bytes(), "path": p} for p in item.images or []]
                rows.append(
                    {"messages": messages, "images": imgs, "modality": modality, "source": s.name, "id": item.id}
                )
    # Token counts are part of every mixture's manifest: the naive build counts them too.
    tok = _tiny_tokenizer()
    texts = ["\n".join(m["content"] for m in r["messages"]) for r in rows]
    text_tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    random.Random(0).shuffle(rows)
    ds = datasets.Dataset.from_list(rows, features=features())
    assert text_tokens > 0
    ds.save_to_disk(out)
    conn.send((time.perf_counter() - t0, len(ds), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def measure(fn, spec: dict, out: str) -> tuple[float, int, float]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=fn, args=(spec, out, child))
    p.start()
    seconds, rows, maxrss_kb = parent.recv()
    p.join()
    return seconds, rows, maxrss_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="Multiply every size (rows and images) by this.")
    ap.add_argument("--images", type=int, default=3000, help="Distinct JPEG files behind the vision rows.")
    args = ap.parse_args()
    s = args.scale
    global LANGUAGE_SIZES
    LANGUAGE_SIZES = {k: max(10, int(v * s)) for k, v in LANGUAGE_SIZES.items()}
    language, vision = int(70000 * s), int(10000 * s)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = generate(root, max(10, int(args.images * s)), vqa_rows=int(60000 * s), aok_rows=int(17056 * s))
        src_rows = sum(LANGUAGE_SIZES.values()) + int(60000 * s) + int(17056 * s)
        mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
        print(
            f"generated {src_rows:,} source rows, {max(10, int(args.images * s)):,} images ({mb:.0f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        spec = spec_dict(paths, language, vision)
        results = {}
        for name, fn in (("naive", run_naive), ("mlan", run_mlan)):
            results[name] = measure(fn, spec, str(root / f"out-{name}"))
            secs, rows, rss = results[name]
            print(f"{name:6s} {rows:,} rows in {secs:6.1f} s = {rows / secs:8,.0f} rows/s, peak RSS {rss:7,.0f} MB")
        (ns, _, nr), (ms, _, mr) = results["naive"], results["mlan"]
        print(
            f"mlan vs naive: {ns / ms:.2f}x speed, {mr / nr:.2f}x peak memory (mlan also dedups, verifies images, checks contamination)"
        )


if __name__ == "__main__":
    sys.exit(main())
