"""`training.padding_free`: text-only batches flattened into one row give the padded batch's loss and
gradients; image and mixed batches are left as they are; the setting resolves against the attention
kernel; and the step-time split of a run (`SFTResult.step_time_split`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_sft import _image_rows, _mc_rows, _sft_args, make_mixture

from mlan.errors import MlanError
from mlan.train.packing import PaddingFreeText, resolve_padding_free


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory, shared_data, tiny_llava_dir):
    """TRL's SFTTrainer around the tiny LLaVA (fp32, CPU), its collator wrapped as `build_trainer` wraps it,
    and rows of both modalities."""
    import torch
    from datasets import Dataset
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from mlan.data.mixture import features
    from mlan.train.trainer import image_token_masking

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    text = _mc_rows(shared_data / "arc_easy" / "train.jsonl", "arc_easy", 3)
    text += _mc_rows(shared_data / "commonsense_qa" / "train.jsonl", "commonsense_qa", 3)
    rows = text + _image_rows(3)
    dataset = Dataset.from_list(rows, features=features())
    out = tmp_path_factory.mktemp("trainer")
    args = SFTConfig(output_dir=str(out), max_length=None, assistant_only_loss=True, report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=model.train(), args=args, train_dataset=dataset, processing_class=processor)
    masked = image_token_masking(trainer.data_collator, model.config.image_token_id)
    # The loss on every token instead (`training.assistant_only_loss: false`): each row's first token then
    # has a label, which the flattening must ignore as the padded batch's shift does.
    every_token = DataCollatorForVisionLanguageModeling(processor=processor, chat_template=processor.chat_template)
    trainer.every_token = image_token_masking(every_token, model.config.image_token_id)
    return trainer, masked, [dataset[i] for i in range(len(rows))]


def _loss_and_grads(trainer, batch):
    """The loss as training computes it (TRL's compute_loss, tokens counted by the Trainer's fetch) and its gradients."""
    model = trainer.model
    model.zero_grad()
    [inputs], num_items = trainer.get_batch_samples(iter([batch]), 1, model.device)
    loss = trainer.compute_loss(model, dict(inputs), num_items_in_batch=num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("assistant_only", [True, False], ids=["assistant-only", "every-token"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_padding_free_text_batch_gives_the_padded_loss_and_gradients(tiny_trainer, kernel, assistant_only):
    """Six text rows of different lengths, padded vs flattened into one row: the same loss and the same
    gradient on every parameter within float32 tolerance, through TRL's compute_loss. transformers keeps
    the packed rows apart from position_ids alone with either CPU kernel (a block-diagonal mask)."""
    trainer, masked, rows = tiny_trainer
    masked = masked if assistant_only else trainer.every_token
    trainer.model.set_attn_implementation(kernel)
    text = rows[:6]
    pad_id = trainer.processing_class.tokenizer.pad_token_id
    padded = masked([dict(r) for r in text])
    packed = PaddingFreeText(masked, pad_id)([dict(r) for r in text])

    lengths = padded["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1 and (padded["attention_mask"] == 0).any()  # there was padding
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, int(lengths.sum()))
    assert packed["position_ids"][0].tolist() == [i for n in lengths.tolist() for i in range(n)]
    # The same label tokens, in order, but for each row's first (never a target: nothing comes before it).
    want = padded["labels"][:, 1:][padded["labels"][:, 1:] != -100].tolist()
    assert packed["labels"][packed["labels"] != -100].tolist() == want

    loss_padded, grads_padded = _loss_and_grads(trainer, padded)
    loss_packed, grads_packed = _loss_and_grads(trainer, packed)
    assert grads_padded.keys() == grads_packed.keys() and grads_padded
    loss_diff = abs(float(loss_padded - loss_packed))
    grad_diff = max(float((grads_padded[n] - grads_packed[n]).abs().max()) for n in grads_padded)
    print(
        f"{kernel}, {'assistant-only' if assistant_only else 'every token'}: loss {float(loss_padded):.6f}, max |loss diff| {loss_diff:.2e}, max |grad diff| {grad_diff:.2e}"
    )
    assert loss_diff < 1e-5 and grad_diff < 1e-5


def test_image_and_mixed_batches_are_left_padded(tiny_trainer):
    """Batches with an image row (image-only and mixed) come out exactly as without the option."""
    import torch

    trainer, masked, rows = tiny_trainer
    wrapped = PaddingFreeText(masked, trainer.processing_class.tokenizer.pad_token_id)
    for picks in ([6, 7, 8], [0, 6, 1]):
        plain = masked([dict(rows[i]) for i in picks])
        out = wrapped([dict(rows[i]) for i in picks])
        assert out.keys() == plain.keys() and "pixel_values" in out and "attention_mask" in out
        assert all(torch.equal(out[k], plain[k]) for k in plain)


def test_padding_free_resolves_against_the_kernel():
    """auto: off on a CPU, on with flash attention on a GPU, off with sdpa there; on: refused with a
    kernel that cannot keep packed rows apart and with Wings, one line each."""
    assert not resolve_padding_free("auto", "sdpa", cuda=False, wings=False).on
    assert not resolve_padding_free("auto", "flash_attention_2", cuda=False, wings=False).on
    assert resolve_padding_free("auto", "flash_attention_2", cuda=True, wings=False).on
    assert resolve_padding_free("auto", "flash_attention_3", cuda=True, wings=False).on
    assert not resolve_padding_free("auto", "sdpa", cuda=True, wings=False).on
    assert not resolve_padding_free("auto", "flash_attention_2", cuda=True, wings=True).on
    assert not resolve_padding_free("off", "flash_attention_2", cuda=True, wings=False).on
    for kernel in ("sdpa", "eager", "flex_attention", "flash_attention_2"):
        assert resolve_padding_free("on", kernel, cuda=False, wings=False).on
    with pytest.raises(MlanError, match=r"^training.padding_free on: attention kernel 'paged\|sdpa' cannot keep") as e:
        resolve_padding_free("on", "paged|sdpa", cuda=True, wings=False)
    assert "\n" not in str(e.value)
    with pytest.raises(MlanError, match=r"^training\.padding_free on: not supported with Wings") as e:
        resolve_padding_free("on", "eager", cuda=False, wings=True)
    assert "\n" not in str(e.value)


def test_padding_free_recipe_values():
    """YAML's bare on/off (booleans to YAML 1.1) read as the setting; anything else is refused."""
    from pydantic import ValidationError

    from mlan.config.base import apply_overrides
    from mlan.config.recipe import SFTRecipe

    base = {"model": {"path": "m"}, "data": {"mixture": "x"}}
    assert SFTRecipe.model_validate(base).training.padding_free == "auto"
    for raw, want in (("on", "on"), ("off", "off"), ("auto", "auto"), ("true", "on")):
        data = apply_overrides(json.loads(json.dumps(base)), [f"training.padding_free={raw}"])
        assert SFTRecipe.model_validate(data).training.padding_free == want
    with pytest.raises(ValidationError):
        SFTRecipe.model_validate({**base, "training": {"padding_free": "yes please"}})


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


@pytest.mark.slow
def test_sft_padding_free_on_through_the_cli(cli, one_line_error, tiny_llava_dir, tmp_path, shared_data):
    """`mlan sft tiny -o training.padding_free=on` trains on a CPU (sdpa); the choice and the step-time
    split are recorded; a kernel that cannot keep packed rows apart is one line before any weights load."""
    mixture = make_mixture(tmp_path / "mix", shared_data, n_language=24, n_vision=8, n_long=0)
    out = tmp_path / "sft"
    r = cli(*_sft_args(tiny_llava_dir, mixture, out, "-o", "training.max_steps=4", "-o", "training.padding_free=on"))
    assert r.exit_code == 0, r.output
    res = json.loads((out / "train_results.json").read_text())
    assert (
        res["padding_free"]["on"] and res["padding_free"]["setting"] == "on" and res["padding_free"]["kernel"] == "sdpa"
    )
    split = res["step_time_split"]
    assert split["steps"] == 4 and set(split["seconds"]) == {"data", "forward_backward", "optimizer", "other"}
    assert all(v >= 0 for v in split["seconds"].values()) and split["collate_s"] is not None
    assert sum(split["seconds"].values()) == pytest.approx(split["total_s"], abs=1e-3)
    assert 0 < split["total_s"] <= res["runtime_s"] + 0.05
    assert "Padding-free text batches: on" in (out / "README.md").read_text()
    assert "forward+backward" in r.output

    bad = _sft_args(tiny_llava_dir, mixture, tmp_path / "bad", "-o", "training.padding_free=on")
    line = one_line_error(cli(*bad, "-o", "model.attn_implementation=paged|sdpa"))
    assert "training.padding_free on: attention kernel 'paged|sdpa' cannot keep packed rows apart" in line


def test_padding_free_auto_is_off_on_a_cpu(tiny_llava_dir, tmp_path):
    """`auto` (the default) resolves to off on a CPU, before any weights load."""
    from mlan.config.recipe import SFTRecipe
    from mlan.train.preflight import check_padding_free, inspect_model

    recipe = SFTRecipe.model_validate(
        {"model": {"path": str(tiny_llava_dir)}, "data": {"mixture": str(Path(tmp_path))}}
    )
    choice = check_padding_free(recipe, inspect_model(recipe), cuda=False)
    assert (choice.setting, choice.on) == ("auto", False) and "CPU" in choice.reason
    recipe.training.padding_free = "on"
    choice = check_padding_free(recipe, inspect_model(recipe), cuda=False)
    assert choice.on and choice.kernel == "sdpa"  # transformers' default, read from a weightless copy


def test_padding_free_outcomes_by_hand():
    """Every outcome of resolve_padding_free in full (setting, on, kernel and the reason recorded in
    train_results.json), which rows count as having an image, and which batches the wrapper leaves padded
    (found by mutation testing, docs/mutation.md)."""
    import torch

    from mlan.train.packing import PaddingFree, has_image

    def r(setting, kernel, cuda=True, wings=False):
        return resolve_padding_free(setting, kernel, cuda=cuda, wings=wings)

    fa2 = "flash_attention_2 runs packed rows as variable-length sequences"
    expected = {
        ("off", "flash_attention_2", True, False): PaddingFree("off", False, "flash_attention_2", "as set"),
        ("auto", "sdpa", True, True): PaddingFree("auto", False, "sdpa", "Wings learners attend across the whole row"),
        ("auto", "flash_attention_2", False, False): PaddingFree(
            "auto",
            False,
            "flash_attention_2",
            "no variable-length attention kernel on a CPU: flattening only costs time",
        ),
        ("auto", "flash_attention_2", True, False): PaddingFree("auto", True, "flash_attention_2", fa2),
        ("on", "flash_attention_2", False, False): PaddingFree("on", True, "flash_attention_2", fa2),
        ("auto", "paged|sdpa", True, False): PaddingFree(
            "auto", False, "paged|sdpa", "paged|sdpa cannot keep packed rows apart"
        ),
        ("on", "eager", False, False): PaddingFree(
            "on", True, "eager", "eager, with a block-diagonal mask over the packed row"
        ),
        ("auto", "sdpa", True, False): PaddingFree(
            "auto", False, "sdpa", "sdpa would attend over the whole packed row; a flash-attention kernel makes it pay"
        ),
    }
    for (setting, kernel, cuda, wings), outcome in expected.items():
        assert r(setting, kernel, cuda, wings) == outcome
    assert r("off", "sdpa", cuda=False).to_json() == {
        "setting": "off",
        "on": False,
        "kernel": "sdpa",
        "reason": "as set",
    }
    kernels = "flash_attention_2, flash_attention_3, flash_attention_4, sdpa, eager, flex_attention"
    with pytest.raises(MlanError, match=rf"one of {kernels}, or padding_free auto/off\)$"):
        r("on", "paged|sdpa")
    with pytest.raises(MlanError, match=r"so packed rows would see each other\); set auto or off$"):
        r("on", "flash_attention_2", wings=True)
    # An image: a non-empty `images` list or any `image` value.
    assert has_image({"images": ["a.png"]}) and has_image({"image": "a.png"}) and has_image({"images": [], "image": 0})
    assert not has_image({"images": []}) and not has_image({"image": None}) and not has_image({})
    # The wrapper leaves padded (the collator's very batch): a batch with an image row, a batch with keys it
    # does not know, a batch without attention_mask.
    ids = torch.tensor([[5, 6]])
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    for examples, batch in (
        ([{"messages": []}, {"images": ["a.png"]}], text),
        ([{"messages": []}], {**text, "pixel_values": torch.zeros(1)}),
        ([{"messages": []}], {"input_ids": ids, "labels": ids}),
    ):
        assert PaddingFreeText(lambda _, b=batch: b, pad_token_id=0)(examples) is batch
