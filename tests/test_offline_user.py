"""A new user running mlan offline on their own data: contamination sets out of reach are skipped and
recorded (unless `contamination.required`), and a language-only mixture trains with a `max_length` shorter
than an image row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_mixture_size import local_sources

# boolq is in --data-dir, race_high (never bundled) is not, and the hub is out of reach.
EVALS = (
    "contamination.evals=[{task: boolq, dataset: google/boolq, split: validation}, "
    "{task: race_high, dataset: ehovy/race, config: high, split: test}]"
)


def _build(cli, data: Path, out: Path, *extra: str):
    return cli(
        "build-mixture", "data_mixtures/mlan.yaml", "--data-dir", data, "--size", "64", "--out", out,
        "-o", "tokenizer=null", "-o", EVALS, *extra,
    )  # fmt: skip


def test_unreadable_contamination_sets_are_skipped_and_recorded(cli, one_line_error, tmp_path, shared_data):
    data = local_sources(shared_data, tmp_path / "data")
    (data / "boolq").mkdir()
    shutil.copy(shared_data / "boolq" / "validation.jsonl", data / "boolq" / "validation.jsonl")

    out = tmp_path / "mix"
    r = _build(cli, data, out)
    assert r.exit_code == 0, r.output
    warnings = [x for x in r.output.splitlines() if "not checked against" in x]
    assert len(warnings) == 1 and "race_high" in warnings[0] and "boolq" not in warnings[0], r.output
    assert "not checked: race_high" in r.stdout
    cont = json.loads((out / "manifest.json").read_text())["contamination"]
    assert cont["checked"] and cont["sets_checked"] == ["boolq"] and list(cont["tasks"]) == ["boolq"]
    assert list(cont["not_checked"]) == ["race_high"] and "unreachable" in cont["not_checked"]["race_high"]
    assert cont["required"] is False

    msg = one_line_error(_build(cli, data, tmp_path / "mix2", "-o", "contamination.required=true"), stdout_ok=True)
    assert "contamination eval 'race_high' (ehovy/race)" in msg and "contamination.required: true" in msg
    assert not (tmp_path / "mix2").exists()


def _short_rows(n: int, images: int = 0) -> list[dict]:
    """Language rows much shorter than an image row of the tiny model; `images` rows with an image."""
    image = Path(__file__).resolve().parents[1] / "mlan/assets/data/images/skimage_coins.png"
    rows = []
    for i in range(n):
        vision = i < images
        rows.append(
            {
                "messages": [{"role": "user", "content": f"{i}+{i}?"}, {"role": "assistant", "content": str(2 * i)}],
                "images": [str(image)] if vision else [],
                "modality": "vision" if vision else "language",
                "source": "sums",
                "id": f"sum-{i}",
            }
        )
    return rows


def _mixture(out: Path, images: int) -> Path:
    from datasets import Dataset, DatasetDict

    from mlan.data.mixture import features

    f = features()
    rows = _short_rows(10, images)
    DatasetDict(
        {"train": Dataset.from_list(rows[:8], features=f), "validation": Dataset.from_list(rows[8:], features=f)}
    ).save_to_disk(str(out))
    (out / "manifest.json").write_text(json.dumps({"name": out.name}))
    return out


def test_language_only_mixture_trains_below_an_image_row(cli, one_line_error, tiny_llava_dir, tmp_path):
    # The tiny model's shortest image row is 85 tokens (16 image tokens); these language rows are shorter.
    short = ["-o", "training.max_length=80", "-o", "training.max_steps=1"]

    def sft(mixture: Path, out: Path):
        data = ["-o", "data.spec=", "-o", f"data.mixture={mixture}"]
        return cli("sft", "tiny", "-o", f"model.path={tiny_llava_dir}", *data, "-o", f"output.dir={out}", *short)

    # With an image row the check stays.
    msg = one_line_error(sft(_mixture(tmp_path / "vision", images=1), tmp_path / "o1"), stdout_ok=True)
    assert "training.max_length 80: shorter than one image row" in msg

    r = sft(_mixture(tmp_path / "language", images=0), tmp_path / "o2")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o2" / "train_results.json").read_text())["steps"] == 1
