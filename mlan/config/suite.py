"""Evaluation suites (`evaluations/*.yaml`): which tasks, from which data, under which protocol.

A suite runs on one engine: `lm_eval` (lm-evaluation-harness in process, its standard task
definitions: what papers compare against) or `generate` (MLAN's zero-shot generate-then-match
protocol: a prompt, greedy generation with stop strings, answer extraction, exact match). For the
generate engine the suite owns the whole protocol: the template (`prompt.style`), the words
(`prompt.wording`), the answer prefix, the stops and how answers are read (`extraction`), so every
model is asked the same text. Every task names its hub dataset and can point at local files instead.
"""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mlan.config.base import StrictModel

# Formats the generate engine knows how to turn into prompts (each read by its dataset schema in
# mlan/schemas, rendered in mlan/evaluate/tasks.py), and the lm-eval tasks the lm_eval engine can
# run. Kept here so a suite file is validated without importing the evaluation code.
# Formats whose prompt text MLAN's evaluation code writes out (`prompt.wording: mlan`, see
# mlan/evaluate/prompts.py for the source of each).
MLAN_FORMATS = (
    "race_high",
    "race_high_all",
    "openbookqa",
    "boolq",
    "hellaswag",
    "realworldqa",
    "ai2d",
    "pope",
    "gqa",
    "scienceqa",
)
GENERATE_FORMATS = (*MLAN_FORMATS, "arc_easy", "arc_challenge", "commonsense_qa", "mmlu", "qa")
Extraction = Literal["mlan", "lenient"]
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
    """generate engine: dataset schema and prompt adapter (default: `name`); one of the known formats.
    `race_high` asks the last question of each article (MLAN's `race_em`: 1,045 items of RACE-High test),
    `race_high_all` every question (3,498); both read `EleutherAI/race` (one row per article) or
    `ehovy/race` (one row per question) rows."""
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
    answer_prefix: str | None = None
    """generate engine: text that starts this task's answer (None: the suite's `prompt.answer_prefix`);
    MLAN primes ScienceQA with `The answer is "`."""
    extraction: Extraction | None = None
    """generate engine: how answers are read (None: the suite's `extraction`)."""
    also_report: list[str] = Field(default_factory=list)
    """Further metrics shown beside the headline one in the results (e.g. GSM8K's other lm-eval filter,
    `exact_match,strict-match`); they do not enter any average."""
    with_images: bool = True
    """generate engine, vision: include questions that have an image (ScienceQA has both kinds)."""
    without_images: bool = True
    """generate engine, vision: include questions without an image (answered from text alone)."""


class PromptSettings(StrictModel):
    """How the generate engine phrases a question (MLAN's zero-shot protocol)."""

    style: Literal["plain", "vicuna_v1", "chat"] = "plain"
    """Who renders the turn. `plain`: `User: ...\\nAssistant: <prefix>` (MLAN's language prompt);
    `vicuna_v1`: LLaVA's Vicuna-v1 template with its system prompt, rendered by the suite for every model,
    `<image>` before the whole prompt (MLAN's vision prompt: a stage-1 checkpoint and a tuned model get the
    same text); `chat`: each model's own chat template (a folder without one: a bare `USER: ... ASSISTANT:`)."""
    wording: Literal["generic", "mlan"] = "generic"
    """Which words ask the question. `mlan`: MLAN's per-task text from its evaluation code (formats
    race_high, openbookqa, boolq, hellaswag, realworldqa, ai2d, pope, gqa, scienceqa); `generic`: the
    instruction fields below, the same for every task."""
    answer_prefix: str = "The best answer is"
    """Text that starts the assistant's answer; the model continues it (a task may set its own)."""
    add_bos: bool = True
    """Start text-only prompts with the tokenizer's BOS token. MLAN's language runs (lm-eval's `hf` model)
    encode without it; image prompts always get it, as LLaVA's tokenizer_image_token gives it."""
    choice_instruction: str = "Choose the best option from the choices provided:"
    """generic wording: line placed before the lettered options of a multiple-choice question."""
    choice_format: str = "{label}: {text}"
    """generic wording: how each option is written (`{label}` is A, B, ...)."""
    yes_no_instruction: str = "Answer yes or no."
    """generic wording: line placed after a yes/no question."""
    open_instruction: str = "Answer the question using a single word or phrase."
    """generic wording: line placed after an open question (GQA)."""


class SuiteAverage(StrictModel):
    """A named average over some of a suite's tasks (each task's headline metric), e.g. a paper's table column."""

    name: str
    """Name in results and tables, e.g. `vision_avg_v3`."""
    tasks: list[str] = Field(min_length=1)
    """The suite's tasks it averages; it is left empty (null) unless every one was evaluated."""
    description: str = ""
    """Where the set comes from (which paper table)."""


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
    extraction: Extraction = "lenient"
    """generate engine: how answers are read (a task may set its own). `mlan`: MLAN's answer filters (a
    letter, or all words of one choice; vision: the text up to the first `. , : "` or newline), with their
    case and substring bugs fixed, then exact match; `lenient`: mlan's own extractor (letter forms, choice
    text, number words, yes/no as a whole word)."""
    tasks: list[SuiteTask] = Field(min_length=1)
    """The tasks, in report order."""
    averages: list[SuiteAverage] = Field(default_factory=list)
    """Named averages written into results.json and the tables (default: one average of all tasks)."""
    image_aspect_ratio: Literal["model", "pad", "original"] = "original"
    """generate engine, vision: `pad` pads each image to a square with the processor's mean colour before
    the processor resizes and crops it (LLaVA's `image_aspect_ratio: pad`, mlan.images); `original` hands it
    over as it is; `model`: as each model was trained (the `image_aspect_ratio` its config.json records, as
    LLaVA's `process_images` reads it: MLAN pads the models it trained with pad, not a stage-1 baseline)."""

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
                if self.prompt.wording == "mlan" and fmt not in MLAN_FORMATS:
                    raise ValueError(
                        f"tasks.{i}.format: {fmt!r} has no MLAN prompt text (prompt.wording mlan knows "
                        f"{', '.join(MLAN_FORMATS)}); use prompt.wording: generic"
                    )
            else:
                name = t.lm_eval_task or t.name
                if name not in LM_EVAL_TASKS:
                    raise ValueError(
                        f"tasks.{i}.lm_eval_task: unsupported lm-eval task {name!r}{_suggest(name, LM_EVAL_TASKS)}"
                    )
                generate_only = (t.format, t.max_new_tokens, t.stop, t.answer_prefix, t.extraction)
                if any(v is not None for v in generate_only):
                    raise ValueError(
                        f"tasks.{i}: format/max_new_tokens/stop/answer_prefix/extraction only apply to engine generate"
                    )
            if not (t.with_images or t.without_images):
                raise ValueError(f"tasks.{i}: with_images and without_images are both false: nothing to evaluate")
        self._check_averages(seen)
        return self

    def _check_averages(self, tasks: set[str]) -> None:
        names: set[str] = set()
        for i, a in enumerate(self.averages):
            if a.name in names or a.name in tasks:
                raise ValueError(f"averages.{i}.name: {a.name!r} is already the name of a task or an average")
            names.add(a.name)
            for t in a.tasks:
                if t not in tasks:
                    raise ValueError(f"averages.{i}.tasks: no task {t!r} in this suite{_suggest(t, sorted(tasks))}")

    def extraction_of(self, task: SuiteTask) -> str:
        """How `task`'s answers are read: its own setting, else the suite's."""
        return task.extraction or self.extraction

    def answer_prefix_of(self, task: SuiteTask) -> str:
        """The text that starts `task`'s answers: its own, else the suite's."""
        return self.prompt.answer_prefix if task.answer_prefix is None else task.answer_prefix

    def task(self, name: str) -> SuiteTask:
        """The task called `name` (KeyError if absent)."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def _suggest(value: str, valid) -> str:
    hint = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(valid)})"
