"""`training.packing: in_batch`: each batch's rows, image rows included, packed into bins without padding give
the padded batch's loss and gradients (text, image and mixed batches; sdpa and eager; assistant-only and
every-token loss; with gradient accumulation; LLaVA and LLaVA-NeXT), a short `mlan sft` gives the padded
run's loss curve, the setting resolves against the attention kernel; and the step-time split of a run."""

from __future__ import annotations

import json
import time

import pytest
from test_sft import _image_rows, _mc_rows, _sft_args

from mlan.errors import MlanError
from mlan.train.packing import (
    STATS_KEY,
    InBatchPacking,
    attention_weight,
    bin_lengths,
    first_fit_decreasing,
    pack,
    plan_bins,
    resolve_packing,
)

LONGER = 40  # repeats of a short sentence that lengthen a row (to about 2.5x, under the tiny recipe's 512)


def _rows(shared_data) -> list[dict]:
    """Six text rows (ARC-Easy, CommonsenseQA) and six image rows (different images), two of each
    lengthened (rows 0, 3, 9, 11) so that shorter rows fit beside them in bins of the longest row."""
    text = _mc_rows(shared_data / "arc_easy" / "train.jsonl", "arc_easy", 3)
    text += _mc_rows(shared_data / "commonsense_qa" / "train.jsonl", "commonsense_qa", 3)
    images = _image_rows(6)
    for i, row in enumerate(images):
        row["messages"][0]["content"] += " Look closely." * i
    for i in (0, 3):
        text[i]["messages"][0]["content"] += " Think it through." * LONGER
    for i in (3, 5):
        images[i]["messages"][0]["content"] += " Look closely." * LONGER
    return text + images


def _trainer(model_dir, shared_data, out):
    """mlan's trainer around a tiny model (fp32, CPU), its collator masked as `build_trainer` masks it, a
    second collator with the loss on every token, and the rows."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mlan.data.mixture import features
    from mlan.train.trainer import MlanSFTTrainer, image_token_masking

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = _rows(shared_data)
    dataset = Dataset.from_list(rows, features=features())
    args = SFTConfig(output_dir=str(out), max_length=None, assistant_only_loss=True, report_to="none", use_cpu=True)
    trainer = MlanSFTTrainer(model=model.train(), args=args, train_dataset=dataset, processing_class=processor)
    image_token = model.config.image_token_id
    # The loss on every token instead (`training.assistant_only_loss: false`): each row's first token then
    # has a label, which packing must ignore as the padded batch's shift does.
    every_token = DataCollatorForVisionLanguageModeling(processor=processor, chat_template=processor.chat_template)
    collators = {
        "assistant-only": image_token_masking(trainer.data_collator, image_token),
        "every-token": image_token_masking(every_token, image_token),
    }
    return trainer, collators, [dataset[i] for i in range(len(rows))]


@pytest.fixture(scope="module")
def llava(tmp_path_factory, shared_data, tiny_llava_dir):
    return _trainer(tiny_llava_dir, shared_data, tmp_path_factory.mktemp("trainer"))


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory, shared_data):
    from llava_next import save_tiny_llava_next

    folder = save_tiny_llava_next(tmp_path_factory.mktemp("next") / "model")
    return _trainer(folder, shared_data, tmp_path_factory.mktemp("trainer_next"))


def _step(trainer, micro_batches):
    """One optimizer step's loss and gradients as training computes them: the Trainer's fetch counts the
    loss tokens of every micro-batch, TRL's compute_loss normalises each by that count, gradients add up."""
    model = trainer.model
    model.zero_grad()
    batches, num_items = trainer.get_batch_samples(iter(micro_batches), len(micro_batches), model.device)
    total = 0.0
    for inputs in batches:
        loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=num_items)
        loss.backward()
        total += float(loss.detach())
    return total, int(num_items), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# Two micro-batches per optimizer step (gradient accumulation 2), rows in the sampler's order.
BATCHES = {
    "text": ([0, 1, 2], [3, 4, 5]),
    "image": ([6, 9, 7], [8, 11, 10]),
    "mixed": ([0, 6, 9, 4], [7, 2, 11, 3]),
}


def _compare(trainer, collator, batches, rows, one_row=False):
    pad_id = trainer.processing_class.tokenizer.pad_token_id
    weight = None if one_row else attention_weight(trainer.model.config.get_text_config())
    packer = InBatchPacking(collator, pad_id, weight)
    padded = [collator([dict(rows[i]) for i in picks]) for picks in batches]
    packed = [packer([dict(rows[i]) for i in picks]) for picks in batches]
    for p, q in zip(padded, packed, strict=True):
        assert (p["attention_mask"] == 0).any()  # there was padding to save
        assert q[STATS_KEY].tolist()[:2] == [p["input_ids"].numel(), q["input_ids"].numel()]
        assert q["input_ids"].numel() < p["input_ids"].numel() and "attention_mask" not in q
    loss_a, n_a, grads_a = _step(trainer, padded)
    loss_b, n_b, grads_b = _step(trainer, packed)
    assert n_a == n_b > 0  # the same loss tokens: the same denominator
    assert grads_a.keys() == grads_b.keys() and grads_a
    grad_diff = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    return loss_a, abs(loss_a - loss_b), grad_diff


@pytest.mark.parametrize("loss_on", ["assistant-only", "every-token"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", list(BATCHES))
def test_packed_step_gives_the_padded_loss_and_gradients(llava, kind, kernel, loss_on):
    """One optimizer step of two micro-batches, padded vs packed: the same loss and the same gradient on
    every trained parameter within float32 tolerance, through TRL's compute_loss and the Trainer's token
    count. The mixed batches put image rows where packing reorders them (their images must follow)."""
    trainer, collators, rows = llava
    trainer.model.set_attn_implementation(kernel)
    loss, loss_diff, grad_diff = _compare(trainer, collators[loss_on], BATCHES[kind], rows)
    print(
        f"{kind}, {kernel}, {loss_on}: loss {loss:.6f}, max |loss diff| {loss_diff:.2e}, max |grad diff| {grad_diff:.2e}"
    )
    assert loss_diff < 1e-5 and grad_diff < 1e-5


def test_one_row_packing_gives_the_padded_loss(llava):
    """The flash-attention layout (the whole batch one row, positions restarting per row) gives the padded
    loss too; on a CPU transformers keeps its rows apart with the same block-diagonal mask."""
    trainer, collators, rows = llava
    trainer.model.set_attn_implementation("sdpa")
    _, loss_diff, grad_diff = _compare(trainer, collators["assistant-only"], BATCHES["mixed"], rows, one_row=True)
    assert loss_diff < 1e-5 and grad_diff < 1e-5


def test_packed_llava_next_gives_the_padded_loss(llava_next):
    """LLaVA-NeXT (images of several tiles, `image_sizes`): mixed batches packed give the padded loss."""
    trainer, collators, rows = llava_next
    trainer.model.set_attn_implementation("sdpa")
    _, loss_diff, grad_diff = _compare(trainer, collators["assistant-only"], BATCHES["mixed"], rows)
    assert loss_diff < 1e-5 and grad_diff < 1e-5


def test_misplaced_images_change_the_loss(llava):
    """The equivalence above can fail: the packed mixed batch with its images left in the padded order
    (not moved with their rows) gives another loss."""
    import torch

    trainer, collators, rows = llava
    collator = collators["assistant-only"]
    picks = BATCHES["mixed"][0]
    padded = collator([dict(rows[i]) for i in picks])
    weight = attention_weight(trainer.model.config.get_text_config())
    packed = InBatchPacking(collator, 0, weight)([dict(rows[i]) for i in picks])
    assert not torch.equal(packed["pixel_values"], padded["pixel_values"])  # packing did reorder them
    wrong = {**packed, "pixel_values": padded["pixel_values"]}
    right_loss, _, _ = _step(trainer, [packed])
    wrong_loss, _, _ = _step(trainer, [wrong])
    assert abs(right_loss - wrong_loss) > 1e-4


def test_pack_by_hand():
    """Three rows of 3, 5 and 2 tokens (right and left padding), one image each, attention-bound (weight 1):
    bins of the longest row (5) by first-fit decreasing, labels and positions per row, each row's first label ignored, images in
    the rows' new order, the bin's tail padded as a sequence of its own; one row for flash kernels."""
    import torch

    ids = torch.tensor([[11, 12, 13, 0, 0], [21, 22, 23, 24, 25], [0, 0, 0, 31, 32]])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids + 100, "pixel_values": torch.arange(3.0)}
    out = pack(dict(batch), [1, 1, 1], pad_token_id=7, weight=1.0)
    assert out["input_ids"].tolist() == [[21, 22, 23, 24, 25], [11, 12, 13, 31, 32]]
    assert out["labels"].tolist() == [[-100, 122, 123, 124, 125], [-100, 112, 113, -100, 132]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert out["pixel_values"].tolist() == [1.0, 0.0, 2.0]
    assert out[STATS_KEY].tolist() == [15, 10, 10, 3] and "attention_mask" not in out

    one = pack(dict(batch), [0, 2, 1], pad_token_id=7, weight=None)
    assert one["input_ids"].tolist() == [[11, 12, 13, 21, 22, 23, 24, 25, 31, 32]]
    assert one["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert one["pixel_values"].tolist() == [0.0, 1.0, 2.0]

    # A tail: rows of 4, 3 and 2 -> bins [4], [3, ...]: 2 does not fit beside 3 in 4, so [4], [3], [2].
    ids = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 0], [3, 3, 0, 0]])
    out = pack({"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids}, [0, 0, 0], 9, weight=1.0)
    assert out["input_ids"].tolist() == [[1, 1, 1, 1], [2, 2, 2, 9], [3, 3, 9, 9]]
    assert out["labels"].tolist() == [[-100, 1, 1, 1], [-100, 2, 2, -100], [-100, 3, -100, -100]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    assert out[STATS_KEY].tolist() == [12, 12, 9, 3]

    with pytest.raises(MlanError, match=r"^training.packing: the collator returned 'token_type_ids'") as e:
        pack({**batch, "token_type_ids": ids}, [1, 1, 1], 0, weight=1.0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="4 images in the rows"):
        pack(dict(batch), [1, 2, 1], 0, weight=1.0)


def test_first_fit_decreasing():
    assert first_fit_decreasing([3, 5, 2], 5) == [[1], [0, 2]]
    assert first_fit_decreasing([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]
    assert first_fit_decreasing([1, 4, 3, 2], 4) == [[1], [2, 0], [3]]
    assert first_fit_decreasing([5], 5) == [[0]]


def test_plan_bins_by_cost():
    """Attention-bound (the tiny model's weight): bins no longer than the longest row; linear-bound (a 7B
    model's): longer bins, fewer positions; no attention cost at all: one bin; never more positions or
    attention than the padded batch when bins are the longest row."""
    from types import SimpleNamespace

    tiny = attention_weight(
        SimpleNamespace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    )
    vicuna = attention_weight(SimpleNamespace(hidden_size=4096, num_attention_heads=32, intermediate_size=11008))
    # 2 x 64 over q/o 2 x 64 x 64, k/v 2 x 64 x 32, MLP 3 x 64 x 128
    assert tiny == pytest.approx(128 / (8192 + 4096 + 24576))
    assert vicuna == pytest.approx(8192 / (2 * 4096 * 4096 * 2 + 3 * 4096 * 11008))
    lengths = [900, 700, 650, 300, 200, 150, 100, 100]
    assert plan_bins(lengths, tiny) == [[0], [1, 4], [2, 5, 6], [3, 7]]
    assert plan_bins(lengths, vicuna) == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert plan_bins(lengths, 0.0) == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert plan_bins([500, 500, 500], tiny) == [[0], [1], [2]]  # nothing to gain: the padded layout


def test_packing_resolves_against_the_kernel():
    """auto and in_batch: one row with a flash kernel, bins with sdpa/eager/flex; auto is off with Wings
    and with a kernel that cannot keep rows apart, where in_batch is refused in one line."""
    assert resolve_packing("auto", "flash_attention_2", wings=False).bins == "one_row"
    for kernel in ("sdpa", "eager", "flex_attention"):
        for setting in ("auto", "in_batch"):
            p = resolve_packing(setting, kernel, wings=False)
            assert p.on and p.bins == "by_cost" and p.kernel == kernel
    assert resolve_packing("off", "sdpa", wings=False).to_json() == {
        "setting": "off",
        "on": False,
        "kernel": "sdpa",
        "bins": None,
        "reason": "as set",
    }
    assert not resolve_packing("auto", "sdpa", wings=True).on
    assert not resolve_packing("auto", "paged|sdpa", wings=False).on
    kernels = "flash_attention_2, flash_attention_3, flash_attention_4, sdpa, eager, flex_attention"
    with pytest.raises(MlanError, match=rf"^training.packing in_batch: attention kernel 'paged\|sdpa' cannot keep packed rows apart \(set model.attn_implementation to one of {kernels}, or packing auto/off\)$"):  # fmt: skip
        resolve_packing("in_batch", "paged|sdpa", wings=False)
    with pytest.raises(MlanError, match=r"^training\.packing in_batch: not supported with Wings .* set auto or off$"):
        resolve_packing("in_batch", "sdpa", wings=True)


def test_packing_recipe_values():
    """YAML's bare off/on read as off/in_batch; the older padding_free reads as packing; a conflict between
    the two and anything else are refused."""
    from pydantic import ValidationError

    from mlan.config.base import apply_overrides
    from mlan.config.recipe import SFTRecipe

    base = {"model": {"path": "m"}, "data": {"mixture": "x"}}

    def read(*overrides):
        data = apply_overrides(json.loads(json.dumps(base)), list(overrides))
        return SFTRecipe.model_validate(data).training.packing

    assert SFTRecipe.model_validate(base).training.packing == "auto"
    assert read("training.packing=off") == read("training.padding_free=off") == "off"
    assert read("training.packing=in_batch") == read("training.padding_free=on") == "in_batch"
    assert read("training.packing=true") == "in_batch" and read("training.padding_free=auto") == "auto"
    assert read("training.padding_free=on", "training.packing=in_batch") == "in_batch"
    for bad in (["training.packing=yes please"], ["training.padding_free=maybe"], ["training.padding_free=on", "training.packing=off"]):  # fmt: skip
        with pytest.raises(ValidationError):
            read(*bad)


def test_packing_auto_reads_the_default_kernel(tiny_llava_dir, tmp_path):
    """`auto` with no kernel in the recipe: transformers' default, read from a weightless copy, before any
    weights load (sdpa here); off never reads it."""
    from mlan.config.recipe import SFTRecipe
    from mlan.train.preflight import check_packing, inspect_model

    recipe = SFTRecipe.model_validate({"model": {"path": str(tiny_llava_dir)}, "data": {"mixture": str(tmp_path)}})
    choice = check_packing(recipe, inspect_model(recipe))
    assert (choice.setting, choice.on, choice.kernel, choice.bins) == ("auto", True, "sdpa", "by_cost")
    recipe.training.packing = "off"
    assert check_packing(recipe, inspect_model(recipe)).kernel is None


@pytest.mark.slow
def test_sft_packed_gives_the_padded_loss_curve(cli, one_line_error, tiny_llava_dir, tmp_path, shared_data):
    """`mlan sft tiny` in random order with gradient accumulation, packed and padded: the same loss at
    every logged step and the same validation loss; the packed run records and prints what packing saved; a kernel that cannot keep
    packed rows apart is one line before any weights load."""
    from datasets import Dataset, DatasetDict

    from mlan.data.mixture import features

    # The rows of the equivalence tests, four times over: short rows fit beside the long ones.
    rows = [{**r, "id": f"{r['id']}-{k}"} for k in range(5) for r in _rows(shared_data)]
    mixture = tmp_path / "mix"
    splits = {"train": rows[:48], "validation": rows[48:]}
    DatasetDict({k: Dataset.from_list(v, features=features()) for k, v in splits.items()}).save_to_disk(str(mixture))
    common = ["-o", "training.max_steps=6", "-o", "training.logging_steps=1", "-o", "training.batch_order=random"]
    common += ["-o", "training.per_device_train_batch_size=4", "-o", "training.gradient_accumulation_steps=2"]
    curves, results = {}, {}
    for setting in ("in_batch", "off"):
        out = tmp_path / setting
        r = cli(*_sft_args(tiny_llava_dir, mixture, out, *common, "-o", f"training.packing={setting}"))
        assert r.exit_code == 0, r.output
        curves[setting] = [p["loss"] for p in json.loads((out / "loss_log.json").read_text())["train"]]
        results[setting] = json.loads((out / "train_results.json").read_text())
        if setting == "in_batch":
            assert "packing" in r.output and "packed" in r.output
    assert len(curves["off"]) == 6
    assert curves["in_batch"] == pytest.approx(curves["off"], abs=1e-4)
    # Evaluation batches stay padded: the Trainer's eval loss (a mean over batches weighted by their rows) is the same.
    assert results["in_batch"]["eval_loss"] == pytest.approx(results["off"]["eval_loss"], abs=1e-4)
    packed = results["in_batch"]["packing"]
    assert packed["on"] and packed["kernel"] == "sdpa" and packed["bins"] == "by_cost"
    saved = packed["saved"]
    assert saved["rows"] == 6 * 8 and saved["packed_positions"] < saved["padded_positions"]
    assert 0 <= saved["padding_packed"] < saved["padding_padded"]
    assert results["off"]["packing"]["on"] is False and results["off"]["packing"]["saved"] is None
    assert "In-batch packing (`packing: in_batch`): on" in (tmp_path / "in_batch" / "README.md").read_text()
    split = results["in_batch"]["step_time_split"]
    assert split["steps"] == 6 and set(split["seconds"]) == {"data", "forward_backward", "optimizer", "other"}
    assert sum(split["seconds"].values()) == pytest.approx(split["total_s"], abs=1e-3)

    bad = _sft_args(tiny_llava_dir, mixture, tmp_path / "bad", "-o", "training.packing=in_batch")
    line = one_line_error(cli(*bad, "-o", "model.attn_implementation=paged|sdpa"))
    assert "training.packing in_batch: attention kernel 'paged|sdpa' cannot keep packed rows apart" in line


class FakeClock:
    """A clock that only moves when told to: `advance(s)` stands in for `s` seconds of work. Whole
    seconds, so every sum and share below is exact in binary floating point."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_step_timer_parts_add_up():
    """Driven through the Trainer's events with a fake clock: each part gets exactly its own time and the
    parts add up to the time from training start to the last step's end."""
    import pickle
    from types import SimpleNamespace

    from mlan.train.timing import StepTimer, TimedCollator

    clock = FakeClock()
    timer = StepTimer(clock=clock)
    args = SimpleNamespace(device=SimpleNamespace(type="cpu"), dataloader_num_workers=0)
    collate = TimedCollator(lambda rows: clock.advance(2) or rows, timer)  # collating: 2 s
    start = clock()
    timer.on_train_begin(args, None, None)
    for _ in range(3):
        clock.advance(1)  # between steps (logging): other
        assert timer.fetch(lambda: (clock.advance(1), collate([1]))[1]) == [1]  # reading 1 s + collating 2 s
        timer.on_step_begin(args, None, None)
        clock.advance(4)  # forward and backward
        timer.on_pre_optimizer_step(args, None, None)
        clock.advance(2)  # optimizer step
        timer.on_step_end(args, None, None)
    wall = clock() - start
    collate([2])  # outside a fetch (an evaluation batch): not counted
    split = timer.summary()
    assert split == {
        "steps": 3,
        "total_s": 30.0,
        "seconds": {"data": 9.0, "forward_backward": 12.0, "optimizer": 6.0, "other": 3.0},
        "fractions": {"data": 0.3, "forward_backward": 0.4, "optimizer": 0.2, "other": 0.1},
        "collate_s": 6.0,
    }
    assert split["total_s"] == wall == 30.0
    assert StepTimer().summary() is None
    # The real clock by default; the collator still pickles for `spawn` dataloader workers.
    assert StepTimer().clock is time.perf_counter
    pickle.dumps(TimedCollator(list, StepTimer()))


def test_packing_outcomes_by_hand():
    """Every outcome of resolve_packing in full, the attention weight with an explicit head size, rows'
    image counts, the bin plans at each candidate length, dtypes, and the run record and its summary line
    (found by mutation testing, docs/mutation.md)."""
    from types import SimpleNamespace

    import torch

    from mlan.train.packing import Packing, describe_packing, image_count, padding_saved

    fa2 = "flash_attention_2 runs each batch as one row of variable-length rows"
    bins = "block-diagonal over bins sized by cost per batch"
    assert resolve_packing("auto", "flash_attention_2", wings=False) == Packing(
        "auto", True, "flash_attention_2", "one_row", fa2
    )
    assert resolve_packing("in_batch", "eager", wings=False) == Packing(
        "in_batch", True, "eager", "by_cost", f"eager, {bins}"
    )
    assert resolve_packing("auto", "sdpa", wings=True) == Packing(
        "auto", False, "sdpa", None, "Wings' learners attend across the whole row"
    )
    assert resolve_packing("auto", "paged|sdpa", wings=False) == Packing(
        "auto", False, "paged|sdpa", None, "paged|sdpa cannot keep packed rows apart"
    )
    # An explicit head size (Qwen3, Gemma: not hidden / heads) and no separate key/value heads.
    cfg = SimpleNamespace(
        hidden_size=64, num_attention_heads=4, head_dim=32, num_key_value_heads=None, intermediate_size=96
    )
    assert attention_weight(cfg) == 2 * 4 * 32 / (2 * 64 * 128 + 2 * 64 * 128 + 3 * 64 * 96)
    odd = SimpleNamespace(hidden_size=60, num_attention_heads=8, intermediate_size=8)  # 60 / 8: whole head size 7
    assert attention_weight(odd) == 2 * 8 * 7 / (2 * 60 * 56 + 2 * 60 * 56 + 3 * 60 * 8)
    assert image_count({"images": ["a", "b"]}) == 2 and image_count({"image": "a.png"}) == 1
    assert image_count({"images": [], "image": None}) == 0 and image_count({}) == 0
    # Bin lengths 1-4 x the longest row and all in one; costs 210 + 6300w (30), 180 + 10800w (60), 180 +
    # 16200w (90), 220 + 24200w (120), 150 + 22500w (150): 30 wins above w = 1/150, 60 down to w = 1/390.
    lengths = [30, 20, 20, 20, 20, 20, 20]
    assert bin_lengths(lengths) == [30, 60, 90, 120, 150] and bin_lengths([7, 3]) == [7, 10]
    assert plan_bins(lengths, 1.0) == [[0], [1], [2], [3], [4], [5], [6]]
    assert plan_bins(lengths, 0.004) == [[0, 1], [2, 3, 4], [5, 6]]
    assert plan_bins(lengths, 0.002) == [[0, 1, 2, 3, 4, 5, 6]]
    assert plan_bins([10, 10], 0.0) == [[0], [1]]  # 20 either way: the shorter bins
    assert plan_bins([4, 2, 2], 1 / 6) == [[0], [1, 2]]  # bins of 4: 2 x 4 x (1 + 4/6) = 13.3 < 8 x (1 + 8/6) = 18.7
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]], dtype=torch.int32)
    out = pack({"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids.long()}, [0, 0], 0, weight=1.0)
    assert out["input_ids"].dtype == torch.int32 and out["labels"].dtype == torch.long
    assert out["position_ids"].dtype == torch.long
    with pytest.raises(MlanError, match=r"which in-batch packing cannot place; set training.packing off$"):
        pack({**out, "attention_mask": ids, "mm_token_type_ids": ids}, [0, 0], 0, weight=1.0)
    # The run record: padding shares rounded to 4 places; None before any packed batch.
    saved = padding_saved([1000, 600, 540, 8])
    assert saved == {
        "rows": 8,
        "real_tokens": 540,
        "padded_positions": 1000,
        "packed_positions": 600,
        "padding_padded": 0.46,
        "padding_packed": 0.1,
    }
    assert padding_saved([0, 0, 0, 0]) is None and padding_saved(None) is None
    thirds = padding_saved([3, 3, 1, 1])
    assert thirds["padding_padded"] == thirds["padding_packed"] == 0.6667  # shares to 4 places
    on = {"on": True, "reason": "sdpa, x", "saved": saved}
    assert describe_packing(on) == (
        "on (sdpa, x): padding 46% of the padded batches' positions, 10% packed (0.60x positions)"
    )
    assert describe_packing({"on": False, "reason": "as set", "saved": None}) == "off (as set)"


def test_mrope_and_per_row_image_counts_by_hand():
    """Qwen2.5-VL's M-RoPE: auto is off with its reason, in_batch refused in one line, off as set;
    LLaVA-OneVision's per-row image counts (`batch_num_images`, rows with images only) follow the rows
    into the bins, and counts that disagree with the rows stop the run; the default kernel is read from the
    model's own class (found by mutation testing, docs/mutation.md)."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    from mlan.train.packing import Packing, default_kernel

    assert resolve_packing("auto", "sdpa", wings=False, mrope=True) == Packing(
        "auto", False, "sdpa", None, "M-RoPE's 3-D positions cannot be packed"
    )
    assert resolve_packing("off", "sdpa", wings=False, mrope=True) == Packing("off", False, "sdpa", None, "as set")
    with pytest.raises(MlanError) as e:
        resolve_packing("in_batch", "sdpa", wings=False, mrope=True)
    assert str(e.value) == (
        "training.packing in_batch: not supported with Qwen2.5-VL (its M-RoPE places image tokens with 3-D "
        "positions, which packed rows' position ids cannot carry); set auto or off"
    )
    # Rows: 3 tokens with 1 image, 5 with none, 2 with 2 images: bins [1], [0, 2] -> counts in order [1, 2].
    ids = torch.tensor([[11, 12, 13, 0, 0], [21, 22, 23, 24, 25], [31, 32, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids, "pixel_values": torch.arange(3.0)}
    out = pack({**batch, "batch_num_images": torch.tensor([1, 2])}, [1, 0, 2], 0, weight=1.0)
    assert out["batch_num_images"].tolist() == [1, 2] and out["pixel_values"].tolist() == [0.0, 1.0, 2.0]
    out = pack({**batch, "batch_num_images": torch.tensor([2, 1])}, [2, 0, 1], 0, weight=1.0)
    assert out["batch_num_images"].tolist() == [2, 1] and out["pixel_values"].tolist() == [0.0, 1.0, 2.0]
    ids2 = torch.tensor([[11, 12, 0, 0, 0], [21, 22, 23, 24, 25], [31, 32, 33, 0, 0]])
    b2 = {"input_ids": ids2, "attention_mask": (ids2 != 0).long(), "labels": ids2, "pixel_values": torch.arange(3.0)}
    out = pack({**b2, "batch_num_images": torch.tensor([1, 2])}, [1, 0, 2], 0, weight=1.0)
    assert out["input_ids"].tolist() == [[21, 22, 23, 24, 25], [31, 32, 33, 11, 12]]  # row 2 before row 0
    assert out["batch_num_images"].tolist() == [2, 1] and out["pixel_values"].tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="batch_num_images does not match the rows' images"):
        pack({**batch, "batch_num_images": torch.tensor([1, 1])}, [1, 0, 2], 0, weight=1.0)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ov = LlavaOnevisionConfig(text_config=text, vision_config=vision)
    assert default_kernel(ov, LlavaOnevisionForConditionalGeneration) == "sdpa"
