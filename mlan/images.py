"""Image preprocessing before the CLIP processor: LLaVA's `image_aspect_ratio`.

`pad` makes an image square with the processor's mean colour before the processor resizes and
centre-crops it, so nothing of a non-square image is cropped away (LLaVA's `expand2square`,
haotian-liu/LLaVA@c121f04:llava/mm_utils.py:152-163, applied in training at llava/train/train.py:702-716
and in evaluation by `process_images`, llava/mm_utils.py:166-173). MLAN's stage 2 trains with it
(wang-research-lab/mlan@7ce179a:scripts/train/finetune.sh:44) and evaluates the trained model with it
(the flag is saved into the model's config, llava/train/train.py:904, and read back by
`process_images`); its stage 1 does not set it (scripts/train/pretrain.sh, so LLaVA's default
`square`, llava/train/train.py:75: no padding). `original` hands the image to the processor as it is (resize the short side, centre-crop).
transformers' CLIP processor has no such option, hence this step.

Light to import (Pillow only, inside the functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

ImageAspectRatio = Literal["pad", "original"]
ASPECT_RATIOS: tuple[str, ...] = ("pad", "original")


def model_aspect_ratio(config) -> str:
    """The `image_aspect_ratio` a model was trained with, from its config: LLaVA saves the flag there
    (llava/train/train.py:904) and so do `mlan sft` and `mlan convert`. "pad" -> pad; anything else
    (absent, LLaVA's "square", LLaVA-NeXT's "anyres") -> original."""
    value = (
        config.get("image_aspect_ratio") if isinstance(config, dict) else getattr(config, "image_aspect_ratio", None)
    )
    return "pad" if value == "pad" else "original"


def mean_colour(processor) -> tuple[int, ...]:
    """The processor's image mean as 0-255 integers, truncated as LLaVA does (`int(x * 255)`):
    CLIP's mean gives (122, 116, 104)."""
    image_processor = getattr(processor, "image_processor", processor)
    mean = getattr(image_processor, "image_mean", None)
    if mean is None:
        from mlan.errors import MlanError

        raise MlanError(f"image_aspect_ratio pad: {type(image_processor).__name__} has no image_mean to pad with")
    return tuple(int(x * 255) for x in mean)


def expand_to_square(image, colour: Sequence[int]):
    """An RGB `image` centred on a square of `colour` whose side is its longer side (LLaVA's
    `expand2square`: the offset of the shorter side is rounded down). A square image is returned as it is."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), tuple(colour))
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def prepare_image(image, processor, aspect_ratio: str = "original"):
    """An RGB image ready for `processor`: padded to a square with its mean colour for `pad`."""
    image = image.convert("RGB")
    return expand_to_square(image, mean_colour(processor)) if aspect_ratio == "pad" else image


class PadImages:
    """Wraps a training collator: every row's images are padded to squares (`pad`) before it runs.

    A class rather than a closure so that DataLoader workers started with `spawn` can pickle it.
    """

    def __init__(self, collator, colour: Sequence[int]) -> None:
        self.collator = collator
        self.colour = tuple(colour)

    def __call__(self, examples: list[dict[str, Any]]):
        padded = []
        for example in examples:
            example = dict(example)
            for key in ("images", "image"):
                value = example.get(key)
                if isinstance(value, list):
                    example[key] = [self._pad(im) for im in value]
                elif value is not None:
                    example[key] = self._pad(value)
            padded.append(example)
        return self.collator(padded)

    def _pad(self, image):
        return expand_to_square(image.convert("RGB"), self.colour)
