"""Dataset schemas: how a row of each dataset (in its Hugging Face schema) reads into one typed
`Item`, the choice letters, and the one reader of local dataset files.

A shared layer: mixtures (mlan.data) render items as training instructions, evaluation
(mlan.evaluate) renders them as prompts; this package imports no stage.

- `SCHEMAS`: schema name -> reader `(row) -> Item` (`arc`, `commonsense_qa`, `squad`, `pope`, ...;
  `llava`: LLaVA's own JSON rows, see mlan.schemas.llava).
- `BY_COLUMNS`: `qa`, `chat`, `plain` readers `(row, columns) -> Item` for data in no published schema.
- `REQUIRED_COLUMNS`: the top-level columns a mixture checks before reading a schema's rows.
- `open_local`, `read_rows`, `find_local`, `is_json_lines`: local JSONL/JSON/Parquet files and save_to_disk folders.
"""

from __future__ import annotations

from collections.abc import Callable

from mlan.schemas import language, vision
from mlan.schemas.files import LOCAL_SUFFIXES, find_local, is_json_lines, open_local, read_rows
from mlan.schemas.generic import BY_COLUMNS, qa_rows
from mlan.schemas.item import LETTERS, BadRow, Item
from mlan.schemas.llava import llava

SCHEMAS: dict[str, Callable[[dict], Item]] = {
    "squad": language.squad,
    "strategyqa": language.strategyqa,
    "arc": language.arc,
    "commonsense_qa": language.commonsense_qa,
    "openbookqa": language.openbookqa,
    "cosmos_qa": language.cosmos_qa,
    "boolq": language.boolq,
    "race": language.race,
    "hellaswag": language.hellaswag,
    "mmlu": language.mmlu,
    "vqav2": vision.vqav2,
    "aokvqa": vision.aokvqa,
    "realworldqa": vision.realworldqa,
    "ai2d": vision.ai2d,
    "pope": vision.pope,
    "gqa": vision.gqa,
    "scienceqa": vision.scienceqa,
    "qa_rows": qa_rows,
    "llava": llava,
}

# VQAv2 also needs `answers` or `multiple_choice_answer` (either will do; the mixture checks that).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "squad": ("id", "context", "question", "answers"),
    "strategyqa": ("qid", "question", "answer"),
    "commonsense_qa": ("id", "question", "choices", "answerKey"),
    "arc": ("id", "question", "choices", "answerKey"),
    "cosmos_qa": ("id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"),
    "vqav2": ("question", "image"),
    "aokvqa": ("question_id", "question", "choices", "correct_choice_idx", "image"),
    "llava": ("conversations",),
}

__all__ = [
    "BY_COLUMNS",
    "LETTERS",
    "LOCAL_SUFFIXES",
    "REQUIRED_COLUMNS",
    "SCHEMAS",
    "BadRow",
    "Item",
    "find_local",
    "is_json_lines",
    "open_local",
    "read_rows",
]
