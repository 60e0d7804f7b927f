"""Evaluation suites (`evaluations/*.yaml`): which tasks, from which data, under which protocol.

A suite runs on one engine: `lm_eval` (lm-evaluation-harness in process, its standard task
definitions: what papers compare against) or `generate` (MLAN's zero-shot generate-then-match
protocol: a prompt, greedy generation with stop strings, our answer extraction, exact match).
Every task names its hub dataset and can point at local files instead.
"""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlan.config.base import StrictModel

# Formats the generate engine knows how to turn into prompts (each read by its dataset schema in
# mlan/schemas, rendered in mlan/evaluate/tasks.py), and the lm-eval tasks the lm_eval engine can
# run. Kept here so a suite file is validated without importing the evaluation code.
GENERATE_FORMATS = (
    "race_high",
    "openbookqa",
    "boolq",
    "hellaswag",
    "realworldqa",
    "ai2d",
    "pope",
    "gqa",
    "scienceqa",
    "arc_easy",
    "arc_challenge",
    "commonsense_qa",
    "mmlu",
    "qa",
)
LM_EVAL_TASKS = (
    "gsm8k",
    "commonsense_qa",
    "arc_easy",
    "arc_challenge",
    "race",
    "hellaswag",
    "mmlu",
    "openbookqa",
)


class HubData(StrictModel):
    """Where a task's rows come from on the Hugging Face Hub."""

    path: str
    """Dataset id, e.g. `allenai/openbookqa`."""
    name: str | None = None
    """Dataset config name, e.g. `main` (None: the default config)."""
    split: str
    """Split to evaluate on, e.g. `test`; also the file name looked up under `--data-dir` (`<task>/<split>.jsonl`)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit), e.g. `refs/convert/parquet` for the parquet export of a script-only repo."""
    images: HubData | None = None
    """A second dataset holding the images, joined on `image_key` (GQA keeps its images apart from its questions)."""
    image_key: str = "imageId"
    """Column joining question rows to `images` rows (the images dataset's id column is `id`)."""


class SuiteTask(StrictModel):
    """One task of a suite."""

    name: str
    """Task name in results (unique within the suite), e.g. `race_high`."""
    format: str | None = None
    """generate engine: dataset schema and prompt adapter (default: `name`); one of the known formats."""
    lm_eval_task: str | None = None
    """lm_eval engine: the lm-eval task whose standard definition is used (default: `name`)."""
    hub: HubData
    """The hub dataset used when no local file is given."""
    data_file: str | None = None
    """Local JSONL/JSON/Parquet file with rows in the hub dataset's schema (`bundled:` allowed); wins over the hub and `--data-dir`."""
    image_dir: str | None = None
    """Folder where image file names in local rows are looked up (default: beside the data file, then its `images/`)."""
    metric: str
    """Headline metric reported for the task, e.g. `acc`, `acc_norm`, `exact_match,strict-match`, `f1`."""
    num_fewshot: int | None = Field(default=None, ge=0)
    """lm_eval engine: few-shot examples (None: lm-eval's standard setting for the task, e.g. 5 for gsm8k)."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """generate engine: most tokens generated per answer."""
    stop: list[str] | None = None
    """generate engine: generation is cut at the first of these strings (None: the suite's `stop`)."""
    with_images: bool = True
    """generate engine, vision: include questions that have an image (ScienceQA has both kinds)."""
    without_images: bool = True
    """generate engine, vision: include questions without an image (answered from text alone)."""


class PromptSettings(StrictModel):
    """How the generate engine phrases a question (MLAN's zero-shot protocol)."""

    style: Literal["plain", "chat"] = "plain"
    """`plain`: `User: ...\\nAssistant: <prefix>` text (MLAN's language prompt); `chat`: the model's chat template
    (Vicuna-v1 system prompt for LLaVA), then the prefix (MLAN's vision prompt)."""
    answer_prefix: str = "The best answer is"
    """Text that starts the assistant's answer; the model continues it."""
    choice_instruction: str = "Choose the best option from the choices provided:"
    """Line placed before the lettered options of a multiple-choice question."""
    choice_format: str = "{label}: {text}"
    """How each option is written (`{label}` is A, B, ...)."""
    yes_no_instruction: str = "Answer yes or no."
    """Line placed after a yes/no question."""
    open_instruction: str = "Answer the question using a single word or phrase."
    """Line placed after an open question (GQA)."""


class EvalSuite(StrictModel):
    """A named set of tasks evaluated together (`evaluations/<name>.yaml`)."""

    name: str
    """Suite name used in results and `--suite`."""
    description: str = ""
    """What the suite measures and where its protocol comes from."""
    engine: Literal["lm_eval", "generate"]
    """`lm_eval`: lm-evaluation-harness standard tasks; `generate`: MLAN's generate-then-match protocol."""
    modality: Literal["language", "vision"]
    """Whether the tasks need images (vision tasks need a LLaVA-style model)."""
    prompt: PromptSettings = PromptSettings()
    """generate engine: prompt phrasing."""
    max_new_tokens: int = Field(default=20, ge=1)
    """generate engine: default most new tokens per answer (a task may set its own)."""
    stop: list[str] = Field(default_factory=lambda: ["User:", "\n\n"])
    """generate engine: default stop strings (a task may set its own)."""
    tasks: list[SuiteTask] = Field(min_length=1)
    """The tasks, in report order."""

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ \t"):
            raise ValueError("must be a non-empty name without spaces or slashes")
        return v

    @model_validator(mode="after")
    def _check_tasks(self) -> EvalSuite:
        seen: set[str] = set()
        for i, t in enumerate(self.tasks):
            if t.name in seen:
                raise ValueError(f"tasks.{i}.name: task {t.name!r} appears twice")
            seen.add(t.name)
            if self.engine == "generate":
                fmt = t.format or t.name
                if fmt not in GENERATE_FORMATS:
                    raise ValueError(f"tasks.{i}.format: unknown format {fmt!r}{_suggest(fmt, GENERATE_FORMATS)}")
                if t.lm_eval_task is not None or t.num_fewshot is not None:
                    raise ValueError(f"tasks.{i}: lm_eval_task/num_fewshot only apply to engine lm_eval")
            else:
                name = t.lm_eval_task or t.name
                if name not in LM_EVAL_TASKS:
                    raise ValueError(
                        f"tasks.{i}.lm_eval_task: unsupported lm-eval task {name!r}{_suggest(name, LM_EVAL_TASKS)}"
                    )
                if t.format is not None or t.max_new_tokens is not None or t.stop is not None:
                    raise ValueError(f"tasks.{i}: format/max_new_tokens/stop only apply to engine generate")
            if not (t.with_images or t.without_images):
                raise ValueError(f"tasks.{i}: with_images and without_images are both false: nothing to evaluate")
        return self

    def task(self, name: str) -> SuiteTask:
        """The task called `name` (KeyError if absent)."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def _suggest(value: str, valid) -> str:
    hint = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(valid)})"
