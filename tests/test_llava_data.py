"""LLaVA-format sources (`adapter: llava`) through `mlan build-mixture`: real LCS-558K and
llava_v1_5_mix665k rows (tests/data/llava, sources in its SOURCES.md) and MLAN-style text rows,
every row taken as given; each bad row is one error line naming the row id; the hub path with
`data_files`; the shipped specs of the released mixtures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

DATA = Path(__file__).parent / "data" / "llava"
LCS = json.loads((DATA / "blip_laion_cc_sbu_558k.first5.json").read_text())
MIX665K = json.loads((DATA / "mix665k.first2.json").read_text())
# MLAN's released rows are in no public copy: these two are written here in the layout of MLAN's
# development code (ToviTu/IT_MLLM scripts/anno/prepare_lang_it.py): id, model, one human and one gpt
# turn, no image. The second has a number id, as some rows of llava_v1_5_mix665k.json do
# (haotian-liu/LLaVA#981): the JSON loader then stores ids as JSON, which must not turn
# "000000033471" into 33471.
MLAN_TEXT = [
    {
        "id": "Mercury_417466",
        "model": "Yi-1.5-34B",
        "conversations": [
            {
                "from": "human",
                "value": "Which statement best explains why photosynthesis is the foundation of most food webs?\n"
                "Choose the best option.\nA. Sunlight is the source of energy for nearly all ecosystems.\n"
                "B. Most ecosystems are found on land instead of in water.\n",
            },
            {"from": "gpt", "value": "Plants turn sunlight into food that animals eat.\nThe answer is A."},
        ],
    },
    {
        "id": 12345,
        "conversations": [
            {"from": "human", "value": "Is the sun a star?"},
            {"from": "gpt", "value": "yes"},
        ],
    },
]
ROWS = [*LCS, *MIX665K, *MLAN_TEXT]


def write_images(folder: Path, rows: list[dict]) -> Path:
    """A small JPEG of its own colour at every path the rows name."""
    from PIL import Image

    for i, row in enumerate(rows):
        if "image" in row:
            path = folder / row["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (30 * i % 256, 90, 200)).save(path, "JPEG")
    return folder


def write_source(tmp_path: Path, rows: list[dict], **source) -> Path:
    """A LLaVA JSON file (pretty-printed list, like the released files), its images, and a spec
    taking every row; returns the spec path."""
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=1))
    write_images(tmp_path / "images", rows)
    src = {
        "name": "llava",
        "dataset": str(tmp_path / "rows.json"),
        "adapter": "llava",
        "image_root": str(tmp_path / "images"),
        "fraction": 1,
        **source,
    }
    spec = {"name": "llava_test", "validation": 0, "dedup": False, "sources": [src]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path / "spec.yaml"


def build(cli, spec: Path, out: Path, *extra: str) -> dict:
    result = cli("-q", "build-mixture", spec, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


def rendered(messages: list[dict], images: int) -> str:
    """A row as training renders it: TRL puts the images before the first user text, mlan's
    Vicuna-v1 template writes each as `<image>\\n` (mlan.train.data.row_lengths does the same)."""
    from trl.data_utils import prepare_multimodal_messages

    from mlan.data.mixture import _tiny_tokenizer
    from mlan.tiny import vicuna_chat_template

    conv = prepare_multimodal_messages(messages, images=[None] * images)
    return _tiny_tokenizer().apply_chat_template(conv, chat_template=vicuna_chat_template(system=""), tokenize=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from typer.testing import CliRunner

    from mlan.cli import app

    tmp = tmp_path_factory.mktemp("llava")
    spec = write_source(tmp, ROWS)
    out = tmp / "out"
    result = CliRunner().invoke(app, ["-q", "build-mixture", str(spec), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return spec, out


def test_every_row_as_given_counts(built):
    import datasets

    _, out = built
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"] == {"train": 9, "validation": 0}
    src = m["sources"]["llava"]
    assert (src["rows_in_source"], src["train"], src["rows_examined"], src["bad_rows"]) == (9, 9, 9, 0)
    # One source, both modalities: counted row by row.
    assert src["modality"] == "mixed" and src["train_by_modality"] == {"language": 2, "vision": 7}
    assert m["modalities"]["vision"]["examples"] == 7 and m["modalities"]["language"]["examples"] == 2
    assert m["modalities"]["vision"]["images"] == 7 and m["modalities"]["vision"]["image_tokens"] == 7 * 576
    assert m["modalities"]["language"]["image_tokens"] == 0 and m["modalities"]["language"]["text_tokens"] > 0
    assert m["templates"]["used"] == {} and m["hygiene"]["dedup"] is False
    train = datasets.load_from_disk(str(out))["train"]
    written = {r["id"]: r for r in train}
    # Ids as written, zero padding kept although the file mixes text and number ids.
    assert set(written) == {f"llava:{r['id']}" for r in ROWS}
    for r in ROWS:
        row = written[f"llava:{r['id']}"]
        assert len(row["images"]) == (1 if "image" in r else 0)
        assert row["modality"] == ("vision" if "image" in r else "language")
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * (len(r["conversations"]) // 2)
        assert not any("<image>" in m["content"] for m in row["messages"])


def test_rows_keep_their_text_and_show_the_image_first(built):
    import datasets

    _, out = built
    train = {r["id"]: r for r in datasets.load_from_disk(str(out))["train"]}
    # LCS-558K row 0 has its marker after the instruction; LLaVA moves it to the front.
    lcs = train["llava:004539375"]
    assert lcs["messages"] == [
        {"role": "user", "content": "Render a clear and concise summary of the photo."},
        {"role": "assistant", "content": "select luxury furniture 3 - inch gel memory foam mattress topper"},
    ]
    text = rendered(lcs["messages"], 1)
    assert text.count("<image>") == 1 and " USER: <image>\nRender a clear and concise summary of the photo." in text
    # The multi-turn mix665k row: three rounds, the image once, before the first question.
    bus = train["llava:000000033471"]
    assert [m["content"] for m in bus["messages"]] == [
        t["value"].removeprefix("<image>\n") for t in MIX665K[0]["conversations"]
    ]
    text = rendered(bus["messages"], 1)
    assert text.count("<image>") == 1 and text.startswith(" USER: <image>\nWhat are the colors of the bus")
    assert bus["images"][0].size == (8, 8)
    # Text rows: no image, turns verbatim (trailing newline included, as LLaVA's prompt has it).
    mlan = train["llava:Mercury_417466"]
    assert mlan["images"] == [] and mlan["messages"][0]["content"] == MLAN_TEXT[0]["conversations"][0]["value"]
    assert "<image>" not in rendered(mlan["messages"], 0)


def test_same_spec_twice_same_bytes(cli, built, tmp_path):
    spec, out = built
    again = build(cli, spec, tmp_path / "again")
    first = json.loads((out / "manifest.json").read_text())
    assert again["content_hash"] == first["content_hash"]
    files = sorted(p.relative_to(out) for p in out.rglob("*.arrow"))
    assert files and all((out / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)


def test_leading_gpt_turn_is_dropped_as_llava_does(cli, tmp_path):
    row = copy.deepcopy(MIX665K[1])
    row["conversations"].insert(0, {"from": "gpt", "value": "Hello! How can I help?"})
    build(cli, write_source(tmp_path, [row]), tmp_path / "out")
    import datasets

    messages = datasets.load_from_disk(str(tmp_path / "out"))["train"][0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def _edit(rows: list[dict], idx: int, fn) -> list[dict]:
    rows = copy.deepcopy(rows)
    fn(rows[idx])
    return rows


def _turn(i: int, value: str | None = None, who: str | None = None):
    def fn(row):
        if who is not None:
            row["conversations"][i]["from"] = who
        if value is not None:
            row["conversations"][i]["value"] = value

    return fn


# case -> (rows, index of the bad row, what the message says after "row N, id '...': ")
BAD_ROWS = {
    "two markers, one image": (
        _edit(LCS, 1, _turn(0, "<image>\nWrite a terse but informative summary of the picture.\n<image>")),
        1,
        "conversations[0].value: 2 '<image>' markers for the row's one image",
    ),
    "marker in a later turn": (
        _edit(MIX665K, 0, _turn(2, "<image>\nWhat feature can be seen on the back of the bus?")),
        0,
        "conversations[2].value: '<image>' outside the first human turn",
    ),
    "image but no marker": (
        _edit(LCS, 3, _turn(0, "Render a clear and concise summary of the photo.")),
        3,
        "field 'image' is set but no turn holds an '<image>' marker",
    ),
    "marker in a text row": (
        _edit(MLAN_TEXT, 0, _turn(0, "<image>\nIs the sky blue?")),
        0,
        "conversations[0].value: '<image>' marker in a row without 'image'",
    ),
    "system turn": (
        _edit(MIX665K, 1, lambda r: r["conversations"].insert(0, {"from": "system", "value": "Be brief."})),
        1,
        "conversations[0].from: 'system' is not 'human' or 'gpt'",
    ),
    "turns not alternating": (
        _edit(MIX665K, 0, _turn(3, who="human")),
        0,
        "conversations[3].from: 'human' where a gpt turn is due (turns must alternate)",
    ),
    "ends with a human turn": (
        _edit(MIX665K, 0, lambda r: r["conversations"].pop()),
        0,
        "conversations: must end with a gpt turn that answers a human turn",
    ),
}


@pytest.mark.parametrize("case", [*BAD_ROWS, "missing image file"])
def test_bad_row_one_line_with_row_id(cli, one_line_error, tmp_path, case):
    if case == "missing image file":
        rows, idx, said = copy.deepcopy(LCS), 2, "cannot read image"
        spec = write_source(tmp_path, rows)
        (tmp_path / "images" / rows[idx]["image"]).unlink()
    else:
        rows, idx, said = BAD_ROWS[case]
        spec = write_source(tmp_path, rows)
    msg = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "out"))
    # A JSON list names rows by position (no line numbers: the released files are pretty-printed).
    assert f"row {idx}, id '{rows[idx]['id']}': {said}" in msg and "(set bad_rows: skip" in msg
    assert not (tmp_path / "out").exists()


def test_bad_rows_skipped_and_counted(cli, tmp_path):
    rows, idx, _ = BAD_ROWS["image but no marker"]
    spec = write_source(tmp_path, rows, fraction=None, count=4, bad_rows="skip")
    m = build(cli, spec, tmp_path / "out")
    assert m["sources"]["llava"]["bad_rows"] == 1 and m["splits"]["train"] == 4
    assert m["sources"]["llava"]["bad_row_examples"] == [
        f"row {idx}, id '{rows[idx]['id']}': field 'image' is set but no turn holds an '<image>' marker"
    ]


def test_spec_errors(cli, one_line_error, tmp_path):
    spec = write_source(tmp_path, ROWS, data_files="MLAN_80k.json")
    assert "data_files is for hub datasets; name the local file itself" in one_line_error(
        cli("build-mixture", spec, "--out", tmp_path / "a")
    )
    spec = write_source(tmp_path, ROWS, fraction=None)
    data = yaml.safe_load(spec.read_text()) | {"modality_split": {"language": 2, "vision": 7}}
    spec.write_text(yaml.safe_dump(data))
    msg = one_line_error(cli("build-mixture", spec, "--out", tmp_path / "b"))
    assert "sources.0: adapter 'llava' reads language and vision rows alike" in msg


def test_hub_repo_of_json_files_read_with_data_files(cli, monkeypatch, tmp_path):
    """`dataset: owner/repo` + `data_files` reaches datasets.load_dataset as its data_files."""
    import datasets

    from mlan import hub

    spec = write_source(tmp_path, MLAN_TEXT)
    data = yaml.safe_load(spec.read_text())
    data["sources"][0] |= {"dataset": "WangResearchLab/MLAN", "data_files": "MLAN_80k.json", "image_root": None}
    spec.write_text(yaml.safe_dump(data))
    calls = []
    real = datasets.load_dataset

    def fake(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return real("json", data_files=str(tmp_path / "rows.json"), split="train")

    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    m = build(cli, spec, tmp_path / "out")
    assert calls == [
        ("WangResearchLab/MLAN", None, {"split": "train", "revision": None, "data_files": "MLAN_80k.json"})
    ]
    assert m["splits"]["train"] == 2 and m["sources"]["llava"]["modality"] == "language"


def test_shipped_released_specs(cli, tmp_path):
    from mlan.config.base import load_config
    from mlan.config.mixture import MixtureSpec
    from mlan.paths import shipped_dir

    expected = {
        "mlan_released": ("WangResearchLab/MLAN", "MLAN_80k.json", None),
        "mlan_released_v_vicuna": ("WangResearchLab/MLAN", "MLAN_v_50l_80k.json", "data/images_mlan_v"),
        "lcs558k": ("liuhaotian/LLaVA-Pretrain", "blip_laion_cc_sbu_558k.json", "data/LLaVA-Pretrain/images"),
    }
    for name, (repo, file, images) in expected.items():
        spec = load_config(shipped_dir("data_mixtures") / f"{name}.yaml", MixtureSpec)
        (src,) = spec.sources
        assert (src.dataset, src.data_files, src.image_root, src.adapter) == (repo, file, images, "llava")
        # Every row, as given: all of the file, no validation split, no duplicate removal.
        assert (src.fraction, spec.validation, spec.dedup, spec.contamination.drop) == (1, 0, False, False)
    # Offline, with the released file under --data-dir by its hub name and images from a folder.
    (tmp_path / "data" / "mlan_v_50l").mkdir(parents=True)
    (tmp_path / "data" / "mlan_v_50l" / "MLAN_v_50l_80k.json").write_text(json.dumps([*MIX665K, *MLAN_TEXT]))
    write_images(tmp_path / "images", MIX665K)
    args = ["-o", f"sources.0.image_root={tmp_path / 'images'}", "-o", "contamination.evals=[]"]
    m = build(cli, "mlan_released_v_vicuna", tmp_path / "out", "--data-dir", tmp_path / "data", *args)
    assert m["sources"]["mlan_v_50l"]["train_by_modality"] == {"language": 2, "vision": 2}
    assert m["covers_eval_tasks"] == ["arc_challenge", "arc_easy", "commonsense_qa"]
