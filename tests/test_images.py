"""`image_aspect_ratio: pad` (LLaVA's expand2square before the CLIP processor): the padding itself, and
that training's collator and evaluation's generator both apply it."""

from __future__ import annotations

import types

import pytest
import torch
from PIL import Image

from mlan.images import PadImages, expand_to_square, mean_colour, prepare_image

CLIP_MEAN = (122, 116, 104)  # int(x * 255) of CLIP's image_mean (0.48145466, 0.4578275, 0.40821073)


@pytest.fixture(scope="module")
def tiny():
    from mlan.tiny import build_tiny_llava

    torch.manual_seed(0)
    return build_tiny_llava("tiny", seed=0)


def _wide(width=5, height=2) -> Image.Image:
    """A non-square image whose pixels all differ from the mean colour."""
    image = Image.new("RGB", (width, height))
    image.putdata([(10 * i, 255 - 10 * i, 3 * i) for i in range(width * height)])
    return image


def test_expand_to_square_centres_the_image_on_the_mean_colour(tiny):
    assert mean_colour(tiny[1]) == CLIP_MEAN
    wide = _wide(5, 2)
    square = expand_to_square(wide, CLIP_MEAN)
    assert square.size == (5, 5)
    # (5 - 2) // 2 = 1 row of padding above, 2 below, as LLaVA's expand2square rounds.
    for y in range(5):
        row = [square.getpixel((x, y)) for x in range(5)]
        if y in (1, 2):
            assert row == [wide.getpixel((x, y - 1)) for x in range(5)]
        else:
            assert row == [CLIP_MEAN] * 5
    tall = expand_to_square(_wide(2, 4), CLIP_MEAN)
    assert tall.size == (4, 4)
    assert [tall.getpixel((x, 0)) for x in range(4)] == [CLIP_MEAN, *_row(_wide(2, 4), 0), CLIP_MEAN]
    same = _wide(3, 3)
    assert expand_to_square(same, CLIP_MEAN) is same
    assert prepare_image(wide, tiny[1], "original").size == (5, 2)
    assert prepare_image(wide.convert("L"), tiny[1], "pad").size == (5, 5)


def _row(image: Image.Image, y: int) -> list:
    return [image.getpixel((x, y)) for x in range(image.size[0])]


def test_training_collator_pads(tiny):
    """The collator `build_trainer` installs for `data.image_aspect_ratio: pad` (mlan.train.trainer)."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = tiny[1]
    inner = DataCollatorForVisionLanguageModeling(processor)
    row = {
        "images": [_wide(64, 16)],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Stripes."}]},
        ],
    }
    original = inner([dict(row)])["pixel_values"]
    padded = PadImages(inner, mean_colour(processor))([dict(row)])["pixel_values"]
    expected = processor.image_processor(images=[expand_to_square(_wide(64, 16), CLIP_MEAN)], return_tensors="pt")
    assert torch.equal(padded, expected["pixel_values"])
    assert not torch.allclose(padded, original)
    assert row["images"][0].size == (64, 16)  # the dataset's own rows are left alone


def test_build_trainer_installs_the_padding(tiny, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig

    from mlan.config.recipe import SFTRecipe
    from mlan.train.data import PreparedSplit
    from mlan.train.model import ModelToTrain
    from mlan.train.packing import resolve_packing
    from mlan.train.trainer import build_trainer

    model, processor = tiny
    rows = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    )
    split = PreparedSplit(rows, [8], [False], {"language": 1, "vision": 0}, {"language": 0, "vision": 0})
    info = types.SimpleNamespace(processor=processor, image_token_id=model.config.image_token_id)
    from mlan.train.engine import Engine
    from mlan.train.precision import PrecisionPlan

    checked = types.SimpleNamespace(
        info=info,
        precision="fp32",
        packing=resolve_packing("off", None, wings=False),
        engine=Engine("single"),
        plan=PrecisionPlan("fp32", "float32", "fp32"),
    )
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=None)
    for ratio, wrapped in (("pad", True), ("original", False)):
        recipe = SFTRecipe.model_validate(
            {
                "model": {"path": "m"},
                "data": {"mixture": "x", "image_aspect_ratio": ratio},
                "training": {"batch_order": "random"},
            }
        )
        trainer = build_trainer(recipe, checked, args, ModelToTrain(model), split, tmp_path / "ckpt")
        assert isinstance(trainer.data_collator, PadImages) is wrapped
        if wrapped:
            assert trainer.data_collator.colour == CLIP_MEAN


def test_generator_pads_for_a_pad_suite(tiny):
    """`HFGenerator` prepares each image as its request says; `run_generate_task` sets that from the suite."""
    from mlan.config.suite import EvalSuite
    from mlan.evaluate.generate import HFGenerator, Request, run_generate_task
    from mlan.schemas import Item

    model, processor = tiny
    seen = []
    observed = _Observed(processor, seen)
    loaded = types.SimpleNamespace(
        model=model, processor=observed, tokenizer=processor.tokenizer, multimodal=True, device="cpu"
    )
    gen = HFGenerator(loaded, batch_size=2)
    image = _wide(64, 16)
    for ratio, size in (("pad", (64, 64)), ("original", (64, 16))):
        seen.clear()
        gen.generate([Request("USER: <image>\nWhat? ASSISTANT:", image, True, ratio)], max_new_tokens=1, stop=[])
        assert [im.size for im in seen[0]] == [size]
        if ratio == "pad":
            assert seen[0][0].getpixel((0, 0)) == CLIP_MEAN and seen[0][0].getpixel((0, 24)) == image.getpixel((0, 0))
    # The suite's setting reaches the requests (a scripted generator sees what HFGenerator would get).
    suite = _vision_suite("pad")
    got = []

    class Scripted:
        multimodal = True

        def generate(self, requests, *, max_new_tokens, stop):
            got.extend(requests)
            return ["yes"] * len(requests)

    run_generate_task(suite.tasks[0], suite, [Item("short", "What?", "yes", "1", images=[image])], Scripted())
    assert [r.image_aspect_ratio for r in got] == ["pad"]
    default = suite.model_dump(exclude={"image_aspect_ratio"})
    assert EvalSuite.model_validate(default).image_aspect_ratio == "original"


def _vision_suite(image_aspect_ratio: str):
    from mlan.config.suite import EvalSuite

    return EvalSuite.model_validate(
        {
            "name": "s",
            "engine": "generate",
            "modality": "vision",
            "image_aspect_ratio": image_aspect_ratio,
            "tasks": [{"name": "gqa", "hub": {"path": "x", "split": "test"}, "metric": "acc"}],
        }
    )


class _Observed:
    """The processor, with the images of each call recorded."""

    def __init__(self, processor, seen: list):
        self._processor, self._seen = processor, seen

    def __call__(self, *args, **kwargs):
        self._seen.append(kwargs.get("images"))
        return self._processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._processor, name)


def test_model_mode_reads_each_models_config(tiny):
    """`image_aspect_ratio: model` pads exactly the models whose config records pad (as LLaVA's
    process_images reads the flag): a padded stage-2 model and an unpadded stage-1 model in one run."""
    from mlan.evaluate.generate import image_aspect_ratio
    from mlan.images import model_aspect_ratio

    suite = _vision_suite("model")
    model, _ = tiny
    for recorded, expected in (("pad", "pad"), ("square", "original"), ("anyres", "original"), (None, "original")):
        config = types.SimpleNamespace(image_aspect_ratio=recorded)
        loaded = types.SimpleNamespace(model=types.SimpleNamespace(config=config))
        assert image_aspect_ratio(suite, types.SimpleNamespace(loaded=loaded)) == expected
        assert model_aspect_ratio({"image_aspect_ratio": recorded}) == expected
    assert image_aspect_ratio(suite, object()) == "original"  # a scripted generator has no config
    assert model_aspect_ratio(model.config) == "original"  # the tiny LLaVA records nothing


@pytest.mark.slow
def test_sft_records_the_setting(cli, tiny_llava_dir, shared_data, tmp_path):
    """`mlan sft` writes the recipe's setting into the trained model's config.json."""
    import json

    from tests.test_sft import _sft_args, make_mixture

    mixture = make_mixture(tmp_path / "mix", shared_data)
    for ratio in ("pad", "original"):
        out = tmp_path / ratio
        args = _sft_args(tiny_llava_dir, mixture, out, "-o", f"data.image_aspect_ratio={ratio}")
        r = cli(*args, "-o", "training.max_steps=1")
        assert r.exit_code == 0, r.output
        assert json.loads((out / "config.json").read_text())["image_aspect_ratio"] == ratio
