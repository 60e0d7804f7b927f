"""What the pre-flight checks learned about the model and its processor (`mlan.train.preflight`
fills it in; the row preparation, the model loading and the outputs read it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ModelInfo:
    """What the pre-flight checks learned about the model and its processor."""

    path: str
    processor: Any
    config: Any
    image_token_id: int
    image_seq_length: int
    chat_template: str  # the template the rows are rendered with in training
    template_source: str
    min_image_row: int
    saved_template: str  # the template written with the trained model (differs for `plain`)
