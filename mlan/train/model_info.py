"""What the pre-flight checks learned about the model and its processor (`mlan.train.preflight`
fills it in; the row preparation, the model loading and the outputs read it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlan import kinds


@dataclass
class ModelInfo:
    """What the pre-flight checks learned about the model and its processor."""

    path: str
    processor: Any
    config: Any
    image_token_id: int
    image_seq_length: int | None  # tokens per image; None where it varies with the image (image_counter)
    chat_template: str  # the template the rows are rendered with in training
    template_source: str
    min_image_row: int
    saved_template: str  # the template written with the trained model (differs for `plain`)
    kind: str = kinds.LLAVA
    image_counter: Any = None  # a row's image sizes -> its image tokens (mlan.families.image_token_counter)

    @property
    def image_tokens(self):
        """What mlan.train.data.row_lengths takes: the fixed count, or the counter."""
        return self.image_counter if self.image_seq_length is None else self.image_seq_length

    @property
    def model_class(self):
        return kinds.model_class(self.kind)
