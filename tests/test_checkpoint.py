"""Checkpoints and resumption, function by function, with expected values worked out here (fast; the
kill-and-resume run through the CLI is tests/test_sft_resume.py)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from mlan.errors import MlanError
from mlan.train import checkpoint as ck


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checkpoints(folder: Path, complete: list[int], incomplete: list[int] = ()) -> None:
    for n in complete:
        (folder / f"checkpoint-{n}").mkdir(parents=True)
        (folder / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    for n in incomplete:
        (folder / f"checkpoint-{n}").mkdir(parents=True)


def test_last_complete_checkpoint_by_number_and_state(tmp_path):
    assert ck.last_complete_checkpoint(tmp_path / "none") is None
    assert ck.last_complete_checkpoint(tmp_path) is None
    _checkpoints(tmp_path, complete=[2, 10, 9], incomplete=[12])
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-11.tmp").mkdir()
    (tmp_path / "checkpoint-11.tmp" / "trainer_state.json").write_text("{}")
    assert ck.last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 9 > 2, not "9" > "10"
    assert ck.checkpoint_dir(Path("runs/vicuna")) == Path("runs/vicuna.checkpoints")


def test_recipe_fingerprint_leaves_out_what_may_change():
    from mlan.config.recipe import SFTRecipe

    recipe = SFTRecipe.model_validate(
        {
            "name": "a",
            "description": "b",
            "model": {"path": "m"},
            "data": {"mixture": "x"},
            "output": {"dir": "o"},
            "training": {"report_to": "tensorboard", "learning_rate": 0.25},
        }
    )
    fp = ck.recipe_fingerprint(recipe)
    assert not {"name", "description", "output"} & set(fp)
    assert "report_to" not in fp["training"] and fp["training"]["learning_rate"] == 0.25
    assert fp["model"]["path"] == "m" and fp["data"]["mixture"] == "x"


def test_file_digest_whole_and_sampled(tmp_path, monkeypatch):
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc" * 1000)
    assert ck.file_digest(small) == _sha(b"abc" * 1000)
    monkeypatch.setattr(ck, "WHOLE_FILE_LIMIT", 10_000)
    monkeypatch.setattr(ck, "BLOCK_SIZE", 16)
    data = bytearray(random.Random(1).randbytes(50_000))
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    last = len(data) - 16
    offsets = [last * i // 63 for i in range(64)]
    assert offsets[0] == 0 and offsets[-1] == last
    want = "sampled:" + _sha(b"sampled:50000" + b"".join(data[o : o + 16] for o in offsets))
    assert ck.file_digest(big) == want
    data[offsets[40] + 15] ^= 0xFF  # the last byte of a sampled block
    big.write_bytes(data)
    assert ck.file_digest(big) != want
    exactly = tmp_path / "limit.bin"
    exactly.write_bytes(bytes(10_000))  # at the limit: still hashed whole
    assert ck.file_digest(exactly) == _sha(bytes(10_000))


def test_model_and_mixture_identity(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    files = {"config.json": b"{}", "model.safetensors": b"weights", "tokenizer.json": b"tok"}
    for name, data in files.items():
        (model / name).write_bytes(data)
    (model / "README.md").write_text("a card")
    (model / ".cache").write_text("hidden")
    (model / "sub").mkdir()
    assert ck.model_identity(str(model), None) == {"files": {n: _sha(d) for n, d in sorted(files.items())}}

    assert ck.mixture_identity(tmp_path, {"content_hash": "abc"}) == {"content_hash": "abc"}
    mix = tmp_path / "mix"
    (mix / "train").mkdir(parents=True)
    saved = {
        "dataset_dict.json": b"1",
        "train/data-00000-of-00001.arrow": b"2",
        "train/state.json": b"3",
        "train/dataset_info.json": b"4",
    }
    for name, data in saved.items():
        (mix / name).write_bytes(data)
    (mix / "manifest.json").write_text("{}")
    (mix / "train" / "cache-1234.arrow").write_bytes(b"a later map's cache")
    want = {"files": {n: _sha(d) for n, d in sorted(saved.items())}}
    assert ck.mixture_identity(mix, None) == want
    assert ck.mixture_identity(mix, {"name": "no hash"}) == want


def test_run_record_and_changes_named(tmp_path, monkeypatch):
    import mlan
    from mlan.config.recipe import SFTRecipe

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_bytes(b"{}")
    recipe = SFTRecipe.model_validate({"model": {"path": str(model)}, "data": {"mixture": "x"}})
    monkeypatch.setattr(mlan, "__version__", "1.2.3")
    record = ck.run_record(recipe, mixture_dir=tmp_path, manifest={"content_hash": "h"}, model_path=str(model))
    assert record == {
        "recipe": ck.recipe_fingerprint(recipe),
        "mixture": {"content_hash": "h"},
        "model": {"files": {"config.json": _sha(b"{}")}},
        "mlan_version": "1.2.3",
    }
    other = json.loads(json.dumps(record))
    other["recipe"]["training"]["learning_rate"] = 1.0
    other["recipe"]["training"]["seed"] = 1
    other["mixture"]["content_hash"] = "g"
    other["mlan_version"] = "1.2.4"
    assert ck.describe_changes(record, other) == (
        "the mixture's rows (content_hash); the mlan version (1.2.3 -> 1.2.4); "
        "the recipe (training.learning_rate, training.seed)"
    )
    many = json.loads(json.dumps(record))
    for k in ("a", "b", "c", "d"):
        many["model"]["files"][k] = "x"
    assert ck.describe_changes(record, many) == "the start model (files.a, files.b, files.c, ...)"
    assert ck.describe_changes(record, record) == ""
    assert ck.describe_changes({"x": 1}, {"x": 2}) == "x"


class _State:
    def __init__(self, main: bool = True):
        self.is_main_process = main
        self.waited = 0
        self.num_processes = 1

    def wait_for_everyone(self):
        self.waited += 1


def test_a_process_that_cannot_see_the_checkpoints_stops_the_run(tmp_path):
    """Several nodes must share the checkpoint folder: a process that does not see the run record the main
    process wrote, or that would resume from another checkpoint, stops every process in one line."""
    folder = tmp_path / "run.checkpoints"
    same = [(0, "node-a", True, "None"), (1, "node-a", True, "None")]
    ck.check_shared_view(folder, same)
    with pytest.raises(MlanError) as e:
        ck.check_shared_view(folder, [*same, (2, "node-b", False, "None")])
    assert str(e.value) == (
        f"{folder}: process 2 on node-b cannot see the run record the main process wrote there; the output folder "
        "must be on a filesystem every node shares (set output.dir to one)"
    )
    with pytest.raises(MlanError, match="the processes found different checkpoints to resume from"):
        ck.check_shared_view(folder, [*same, (2, "node-b", True, str(folder / "checkpoint-4"))])


def test_decide_and_start(tmp_path):
    record = {"recipe": {"a": 1}, "mixture": {"content_hash": "h"}, "model": {"files": {}}, "mlan_version": "1"}
    folder = tmp_path / "run.checkpoints"
    assert ck.decide_resume(record, folder, None) is None
    assert ck.decide_resume(record, folder, False) is None
    with pytest.raises(MlanError, match=r"--resume: no complete checkpoint in .*run\.checkpoints"):
        ck.decide_resume(record, folder, True)

    # A fresh start clears old checkpoints and writes the record, on the main process only.
    _checkpoints(folder, complete=[4])
    state = _State()
    ck.start_checkpoints(record, folder, None, state)
    assert state.waited == 1 and not (folder / "checkpoint-4").exists()
    assert json.loads((folder / "run_record.json").read_text()) == record
    _checkpoints(folder, complete=[4])
    ck.start_checkpoints({"changed": True}, folder, folder / "checkpoint-4", _State(main=False))
    assert (folder / "checkpoint-4").is_dir() and json.loads((folder / "run_record.json").read_text()) == record
    ck.start_checkpoints(record, folder, folder / "checkpoint-4", _State())  # resuming: kept
    assert (folder / "checkpoint-4").is_dir()

    assert ck.decide_resume(record, folder, None) == folder / "checkpoint-4"
    assert ck.decide_resume(record, folder, True) == folder / "checkpoint-4"
    assert ck.decide_resume({**record, "mlan_version": "2"}, folder, False) is None
    with pytest.raises(MlanError) as e:
        ck.decide_resume({**record, "mlan_version": "2"}, folder, None)
    assert str(e.value) == (
        f"{folder}: checkpoints of another run: the mlan version (1 -> 2) changed; "
        "pass --no-resume to discard them and start over"
    )
    (folder / "run_record.json").write_text("{oops")
    with pytest.raises(MlanError, match=r"run_record\.json: invalid JSON .*--no-resume"):
        ck.decide_resume(record, folder, None)
    (folder / "run_record.json").unlink()
    with pytest.raises(MlanError, match=r"without a run record \(run_record.json\).*--no-resume"):
        ck.decide_resume(record, folder, None)


def test_wrapper_names_and_weight_files(tmp_path):
    name = "_orig_mod.module._fsdp_wrapped_module.model.layers.0._checkpoint_wrapped_module.mlp.module_x.weight"
    assert ck.unwrapped_name(name) == "model.layers.0.mlp.module_x.weight"
    assert ck.unwrapped_name("model.module.weight") == "model.weight"
    assert ck.checkpoint_weight_files(tmp_path) == []
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert ck.checkpoint_weight_files(tmp_path) == [tmp_path / "model.safetensors"]
    index = {
        "weight_map": {
            "a": "model-00002-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert ck.checkpoint_weight_files(tmp_path) == [
        tmp_path / "model-00001-of-00002.safetensors",
        tmp_path / "model-00002-of-00002.safetensors",
    ]


def test_checksum_and_legacy_weights(tiny_llava_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlavaForConditionalGeneration

    a = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    b = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert ck.checksum(a) == ck.checksum(b) and len(ck.checksum(a)) == 64
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert ck.checksum(a) != ck.checksum(b)
    # Loading back a checkpoint written under llava-hf's legacy names into another model restores it exactly.
    legacy = load_file(str(tiny_llava_dir / "model.safetensors"))
    assert any(k.startswith("language_model.model.") for k in legacy)
    ck.load_llava_weights(b, tiny_llava_dir)
    assert ck.checksum(a) == ck.checksum(b)
    del legacy[next(k for k in legacy if k.startswith("vision_tower."))]
    (tmp_path / "broken").mkdir()
    save_file(legacy, str(tmp_path / "broken" / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"checkpoint weights do not fit the model \(missing \['model\.vision_tower"):
        ck.load_llava_weights(b, tmp_path / "broken")


def test_rank_checksums_need_several_whole_copies():
    class Trainer:
        is_fsdp_enabled = False
        is_deepspeed_enabled = False

    assert ck.rank_checksums(Trainer(), 1) == []
    t = Trainer()
    t.is_fsdp_enabled = True
    assert ck.rank_checksums(t, 2) == []
    t = Trainer()
    t.is_deepspeed_enabled = True
    assert ck.rank_checksums(t, 4) == []


def test_hub_model_identity_is_its_commit(monkeypatch, tmp_path):
    import huggingface_hub

    from mlan.config.recipe import SFTRecipe

    calls = []

    def download(repo, filename, revision=None):
        calls.append((repo, filename, revision))
        return str(tmp_path / "hub" / "snapshots" / "0123abc" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert ck.model_identity("org/model", "v1") == {"hub": "org/model", "revision": "v1", "commit": "0123abc"}
    assert calls == [("org/model", "config.json", "v1")]
    recipe = SFTRecipe.model_validate({"model": {"path": "org/model", "revision": "v2"}, "data": {"mixture": "x"}})
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "dataset_dict.json").write_bytes(b"{}")
    record = ck.run_record(recipe, mixture_dir=mix, manifest=None, model_path="org/model")
    assert record["model"] == {"hub": "org/model", "revision": "v2", "commit": "0123abc"}
    assert record["mixture"] == {"files": {"dataset_dict.json": _sha(b"{}")}}


def test_changes_named_at_every_depth():
    saved = {"mixture": {"content_hash": "h"}, "model": {"files": {"a": "1", "b": "2", "c": "3"}}}
    # Another kind of identity (a folder's files against a manifest's hash), and exactly three changes.
    current = {"mixture": {"files": {"x": "1"}}, "model": {"files": {"a": "0", "b": "0", "c": "0"}}}
    assert ck.describe_changes(saved, current) == (
        "the mixture's rows (content_hash, files); the start model (files.a, files.b, files.c)"
    )


def test_gathered_checksums(monkeypatch):
    import accelerate.utils
    import torch

    model = torch.nn.Linear(2, 2)

    class Accelerator:
        def unwrap_model(self, m):
            return m.module

    class Trainer:
        is_fsdp_enabled = False
        is_deepspeed_enabled = False
        accelerator = Accelerator()

    trainer = Trainer()
    trainer.model = torch.nn.Module()
    trainer.model.module = model
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda xs: [*xs, *xs])
    assert ck.rank_checksums(trainer, 2) == [ck.checksum(model)] * 2


def test_weights_load_strictly_but_for_tied_heads_and_wings(tiny_llava_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlavaForConditionalGeneration

    def saved(state: dict, name: str) -> Path:
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "model.safetensors"))
        return tmp_path / name

    full = load_file(str(tiny_llava_dir / "model.safetensors"))
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    reference = ck.checksum(model)
    ck.load_checkpoint(model, tiny_llava_dir)  # the LLaVA base; no Wings learners on this model
    assert ck.checksum(model) == reference

    # An untied head missing from the checkpoint is an error (it would stay as initialised).
    no_head = {k: v for k, v in full.items() if not k.endswith("lm_head.weight")}
    with pytest.raises(RuntimeError, match=r"missing \['lm_head\.weight'\]"):
        ck.load_llava_weights(model, saved(no_head, "no-head"))
    # A tied head is not saved: its absence is fine.
    config = model.config
    config.tie_word_embeddings = True
    tied = LlavaForConditionalGeneration(config)
    assert tied.lm_head.weight is tied.model.language_model.embed_tokens.weight
    ck.load_llava_weights(tied, tmp_path / "no-head")
    assert torch.equal(tied.lm_head.weight, tied.model.language_model.embed_tokens.weight)

    # Wings learners live in their own file: their parameters may be missing here, and only they.
    layer = model.model.language_model.layers[0]
    layer.wings = torch.nn.Linear(2, 2)
    ck.load_llava_weights(model, tiny_llava_dir)
    # An unknown key keeps its name in the message; at most three names of each kind are listed.
    extra = {**full, "language_model.model.extra": torch.zeros(1)}
    missing = {k: v for k, v in full.items() if "vision_tower" not in k}
    with pytest.raises(RuntimeError, match=r"unexpected \['language_model\.model\.extra'\]"):
        ck.load_llava_weights(model, saved(extra, "extra"))
    with pytest.raises(RuntimeError) as e:
        ck.load_llava_weights(model, saved(missing, "missing"))
    listed = str(e.value).split("missing [")[1].split("]")[0]
    assert listed.count("model.vision_tower.") == 3


def test_start_makes_the_folder_with_its_parents(tmp_path):
    folder = tmp_path / "a" / "b" / "run.checkpoints"
    ck.start_checkpoints({"r": 1}, folder, None, _State())
    assert json.loads((folder / "run_record.json").read_text()) == {"r": 1}


def test_start_checkpoints_compares_every_process_view(tmp_path, monkeypatch):
    """With several processes, each one's view of the checkpoint folder is gathered and compared (one process
    alone gathers nothing); the main process's record is what the others must see."""
    import accelerate.utils

    folder = tmp_path / "run.checkpoints"
    gathered = []

    def gather_object(objects):
        gathered.append(objects)
        return [*objects, (1, "node-b", seen["other"], other_resume["at"])]

    seen, other_resume = {"other": True}, {"at": "None"}
    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    state = _State()
    ck.start_checkpoints({"r": 1}, folder, None, state)  # one process: nothing to gather
    assert gathered == []
    state.num_processes, state.process_index = 2, 0
    ck.start_checkpoints({"r": 1}, folder, None, state)
    [[(index, host, sees, resume)]] = gathered
    assert (index, sees, resume) == (0, True, "None") and isinstance(host, str) and host
    assert state.waited == 2 and json.loads((folder / "run_record.json").read_text()) == {"r": 1}
    # Resuming: each process reports the checkpoint it resumes from, which must be the others'.
    other_resume["at"] = str(folder / "checkpoint-4")
    ck.start_checkpoints({"r": 1}, folder, folder / "checkpoint-4", state)
    assert gathered[-1][0][3] == str(folder / "checkpoint-4")
    seen["other"], other_resume["at"] = False, "None"
    with pytest.raises(MlanError, match=rf"^{re.escape(str(folder))}: process 1 on node-b cannot see the run record"):
        ck.start_checkpoints({"r": 1}, folder, None, state)
