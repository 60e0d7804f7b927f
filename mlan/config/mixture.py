"""The mixture spec (`data_mixtures/*.yaml`): which datasets, how many rows of each, how they
become instructions, and which evaluation data to check the result against."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mlan.config.base import StrictModel
from mlan.config.rationales import RationaleSettings

# Adapter name -> the modality of the rows it produces (None: decided by the source's columns;
# "mixed": decided row by row, by whether the row has an image).
ADAPTERS: dict[str, Literal["language", "vision", "mixed"] | None] = {
    "squad": "language",
    "strategyqa": "language",
    "commonsense_qa": "language",
    "cosmos_qa": "language",
    "arc": "language",
    "vqav2": "vision",
    "aokvqa": "vision",
    "chat": None,
    "qa": None,
    "plain": None,
    "llava": "mixed",
}

# Adapters whose rows hold a gold answer a teacher can explain (`mlan rationales`, `targets: rationale`);
# the others carry their own targets (chat, llava) or none of that shape (plain).
RATIONALE_ADAPTERS = ("squad", "strategyqa", "commonsense_qa", "cosmos_qa", "arc", "vqav2", "aokvqa", "qa")

# Canonical evaluation dataset names a mixture can declare it covers (the evaluation contract).
EVAL_TASKS = (
    "gsm8k",
    "commonsense_qa",
    "arc_easy",
    "arc_challenge",
    "race_high",
    "hellaswag",
    "mmlu",
    "openbookqa",
    "boolq",
    "realworldqa",
    "ai2d",
    "pope",
    "gqa",
    "scienceqa",
)


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integers proportional to `weights` (largest remainder, ties by position)."""
    wsum = float(sum(weights))
    if total == 0 or wsum <= 0:
        return [0] * len(weights)
    exact = [total * w / wsum for w in weights]
    out = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def _error(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is (no "Value error," prefix)."""
    # The message is passed as context so that braces in it are not read as placeholders.
    return PydanticCustomError("mixture_spec", "{message}", {"message": message})


class Columns(StrictModel):
    """Column names for the generic adapters (`qa`, `plain` and `chat`); dotted names reach into structs."""

    question: str = "question"
    """Column holding the question text (`qa`)."""
    answer: str = "answer"
    """Column holding the answer: text, a bool (yes/no), or for choices a letter, an index or the choice text (`qa`)."""
    choices: str | None = None
    """Column holding the list of options; set it to make the rows multiple-choice (`qa`)."""
    context: str | None = None
    """Column holding a passage shown before the question (`qa`)."""
    image: str | None = None
    """Column holding an image (path relative to `image_root`, or an image feature); makes rows vision rows (`qa`)."""
    rationale: str | None = None
    """Column holding a rationale, used by the chain-of-thought form (`qa`)."""
    id: str | None = None
    """Column holding a row id; the row number is used when absent (`qa`, `chat`)."""
    messages: str = "messages"
    """Column holding the conversation, a list of {role, content} (`chat`)."""
    images: str | None = None
    """Column holding the list of images of a conversation (`chat`); none for text-only data."""


class SourceSpec(StrictModel):
    """One dataset feeding the mixture."""

    name: str
    """Unique name of the source, recorded in every row's `source` column and in the manifest."""
    dataset: str
    """A hub dataset id (`rajpurkar/squad`), a local JSONL/JSON/Parquet file, a `save_to_disk` folder, or `bundled:<path>`."""
    config: str | None = None
    """Hub dataset configuration (subset), e.g. `ARC-Easy`."""
    split: str = "train"
    """Split to read (hub datasets and `save_to_disk` dataset dicts; a local file is one split)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the dataset."""
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    """File(s) of a hub dataset repo to read (e.g. `MLAN_80k.json`; a {split: files} mapping also works), for repos
    of loose data files such as LLaVA JSON files; hub only (a local file is named in `dataset`)."""
    adapter: str
    """How rows become instructions: one of squad, strategyqa, commonsense_qa, cosmos_qa, arc, vqav2, aokvqa, chat, qa,
    plain (question/answer columns as written, no instruction template: for data that carries its own phrasing),
    llava (LLaVA's JSON rows `{id, image?, conversations}`, used as given; each row is vision or language by its image)."""
    columns: Columns = Field(default_factory=Columns)
    """Column names for the generic `qa` and `chat` adapters."""
    image_root: str | None = None
    """Folder that relative image paths are resolved against (LLaVA's `--image_folder`; default: the data file's
    folder for a local source; a hub source whose rows hold paths needs it)."""
    count: int | None = Field(default=None, ge=0)
    """Number of training rows to take from this source (exactly one of count/fraction unless a modality split is given);
    above the source's size only with `replace: true`."""
    fraction: float | None = Field(default=None, gt=0, le=1)
    """Share of this source's rows to take for training, in (0, 1]."""
    weight: float | None = Field(default=None, gt=0)
    """With a modality split: relative weight of this source within its modality (default: its number of rows)."""
    replace: bool = False
    """Draw the training rows with replacement, as MLAN's data preparation does, so `count` (or a weight's share)
    may exceed the source's size: a row drawn again repeats the row as first rendered, and the manifest counts the
    repeats. Validation rows are still distinct and never trained on. Without it, asking for more rows than the
    source holds is an error."""
    chain_of_thought: float = Field(default=0.0, ge=0, le=1)
    """Share of rows with a rationale rendered in the chain-of-thought form (rationale, then the answer)."""
    bad_rows: Literal["fail", "skip"] = "fail"
    """What to do with a row lacking a required field or holding an unreadable image: stop, or skip and count it."""
    covers: list[str] | None = None
    """Evaluation tasks this source's data comes from (default: derived from the adapter and dataset name)."""

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, v: str) -> str:
        if v not in ADAPTERS:
            close = difflib.get_close_matches(v, list(ADAPTERS), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(ADAPTERS)}"
            raise _error(f"unknown adapter ({hint})")
        return v

    @field_validator("covers")
    @classmethod
    def _known_tasks(cls, v: list[str] | None) -> list[str] | None:
        for task in v or []:
            if task not in EVAL_TASKS:
                raise _error(f"unknown evaluation task {task!r} (valid: {', '.join(EVAL_TASKS)})")
        return v

    @property
    def modality(self) -> Literal["language", "vision", "mixed"]:
        """`vision` when the rows carry images; `mixed` when each row decides (the `llava` adapter)."""
        fixed = ADAPTERS[self.adapter]
        if fixed:
            return fixed
        col = self.columns.image if self.adapter in ("qa", "plain") else self.columns.images
        return "vision" if col else "language"

    def covered_tasks(self) -> list[str]:
        """The evaluation tasks this source overlaps (explicit `covers`, else from the adapter)."""
        if self.covers is not None:
            return list(self.covers)
        if self.adapter == "commonsense_qa":
            return ["commonsense_qa"]
        if self.adapter == "arc":
            where = f"{self.config or ''} {self.dataset}".lower()
            easy, challenge = "easy" in where, "challenge" in where
            # Unknown which half: mark both, since marking a task unseen when it was seen is the worse error.
            return [
                t for t, hit in (("arc_easy", easy), ("arc_challenge", challenge)) if hit or not (easy or challenge)
            ]
        return []


class ModalitySplit(StrictModel):
    """Training rows per modality, spread over the sources of each modality."""

    language: int = Field(default=0, ge=0)
    """Language-only training rows."""
    vision: int = Field(default=0, ge=0)
    """Vision (image + text) training rows."""


class EvalData(StrictModel):
    """One evaluation dataset to check the mixture against."""

    task: str
    """Evaluation task name, as reported (e.g. boolq, commonsense_qa)."""
    dataset: str
    """A hub dataset id, a local JSONL/JSON/Parquet file, a `save_to_disk` folder, or `bundled:<path>`."""
    config: str | None = None
    """Hub dataset configuration (subset)."""
    split: str = "test"
    """Split holding the evaluation questions."""
    revision: str | None = None
    """Hub revision of the dataset."""
    question_fields: list[str] = Field(default_factory=lambda: ["question"], min_length=1)
    """Columns joined (with a space) into the question text compared against the mixture's questions."""


class Contamination(StrictModel):
    """Overlap check of the mixture's questions against evaluation data."""

    evals: list[EvalData] = Field(default_factory=list)
    """Evaluation datasets to compare with; empty disables the check."""
    ngram: int = Field(default=8, ge=3)
    """Word n-gram length of the overlap test."""
    ngram_threshold: float = Field(default=0.5, gt=0, le=1)
    """A row overlaps an evaluation question when they share at least this share of the shorter one's n-grams."""
    drop: bool = False
    """Drop overlapping rows (and draw replacements from the same source) instead of only reporting them."""
    required: bool = False
    """Stop the build when an evaluation set cannot be read (not in --data-dir, hub unreachable); by default such
    a set is skipped with a warning and the manifest lists it under `contamination.not_checked`."""


class MixtureSpec(StrictModel):
    """A seeded, audited instruction mixture: sources, sizes, templates and hygiene."""

    name: str
    """Name of the mixture (default output folder `runs/mixtures/<name>`)."""
    description: str = ""
    """Free text recorded in the manifest."""
    seed: int = 42
    """Seed of every random choice: sampling, template choice, chain-of-thought choice, shuffling."""
    size: int | None = Field(default=None, ge=1)
    """Total training rows. When every source has a `count` (or a modality_split is given) and `size` differs
    from their total, every count is scaled to `size` by the spec's shares (largest remainder, the exact total),
    and a validation count with them (a fraction stays a fraction); the manifest records it under `scaled`.
    With fractions it must equal the rows they give."""
    modality_split: ModalitySplit | None = None
    """Training rows per modality, spread over each modality's sources by weight (default: their sizes)."""
    validation: int | float = Field(default=0.01, ge=0)
    """Validation rows drawn beside the training rows (disjoint): a count, or a share of the training rows if < 1."""
    sources: list[SourceSpec] = Field(min_length=1)
    """The datasets feeding the mixture."""
    tokenizer: str | None = None
    """Tokenizer for the token counts (folder or hub id); default: mlan's tiny BPE tokenizer (recorded in the manifest)."""
    image_tokens: int | str = 576
    """Tokens per image: a number (576 for LLaVA-1.5 at 336 px), or a processor folder / hub id to measure it with."""
    dedup: bool = True
    """Remove exact and near-duplicate rows inside the mixture (replacements are drawn from the same source)."""
    contamination: Contamination = Field(default_factory=Contamination)
    """Overlap check against evaluation data."""
    targets: Literal["answer", "rationale"] = "answer"
    """What each row's assistant turn holds. answer: the direct answer (a letter, yes/no, a span). rationale:
    MLAN's form, a teacher's rationale from the store `mlan rationales` wrote for this spec, a newline, one of
    twenty "..., the direct answer is:" phrases (seeded), the answer and a full stop; rows without a kept
    rationale are left out and counted."""
    rationales: RationaleSettings = Field(default_factory=RationaleSettings)
    """The teacher step (`mlan rationales`) and the store `targets: rationale` reads."""

    # How `size` rescaled the spec's counts ({from, to, counts: {name: [before, after]}, validation}); None
    # when it did not. The counts themselves are the scaled ones, so the config hash names the build.
    _scaled: dict | None = PrivateAttr(default=None)

    @property
    def scaled(self) -> dict | None:
        """How `size` rescaled the spec's counts, or None (recorded in the manifest)."""
        return self._scaled

    @model_validator(mode="after")
    def _check_targets(self) -> MixtureSpec:
        if self.targets == "rationale":
            for i, s in enumerate(self.sources):
                if s.adapter not in RATIONALE_ADAPTERS:
                    raise _error(
                        f"sources.{i}: adapter {s.adapter!r} rows carry no gold answer for a teacher to explain "
                        f"(targets: rationale reads {', '.join(RATIONALE_ADAPTERS)})"
                    )
                if s.chain_of_thought:
                    raise _error(
                        f"sources.{i}.chain_of_thought: every row ends in a teacher rationale with targets: "
                        "rationale; leave it at 0"
                    )
        return self

    @model_validator(mode="after")
    def _check_sizes(self) -> MixtureSpec:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _error(f"sources: duplicate source name {dup[0]!r} (names must be unique)")
        if self.modality_split is not None:
            for i, s in enumerate(self.sources):
                if s.modality == "mixed":
                    raise _error(
                        f"sources.{i}: adapter {s.adapter!r} reads language and vision rows alike, so it cannot be "
                        "apportioned by modality_split; give it a count or fraction instead"
                    )
                if s.count is not None or s.fraction is not None:
                    raise _error(
                        f"sources.{i}.{'count' if s.count is not None else 'fraction'}: not allowed with "
                        "modality_split (use `weight` to skew a source within its modality)"
                    )
            for modality in ("language", "vision"):
                wanted = getattr(self.modality_split, modality)
                if wanted and not any(s.modality == modality for s in self.sources):
                    raise _error(f"modality_split.{modality}: {wanted} rows asked but no {modality} source given")
            total = self.modality_split.language + self.modality_split.vision
            if self.size is not None and self.size != total:
                if not total:
                    raise _error(f"size: {self.size} rows asked but modality_split gives none to scale")
                before = {"language": self.modality_split.language, "vision": self.modality_split.vision}
                after = apportion(self.size, list(before.values()))
                self.modality_split.language, self.modality_split.vision = after
                self._record_scaling(total, {k: [b, a] for (k, b), a in zip(before.items(), after, strict=True)})
        else:
            for i, s in enumerate(self.sources):
                if (s.count is None) == (s.fraction is None):
                    raise _error(f"sources.{i}: give exactly one of count or fraction (or a top-level modality_split)")
                if s.weight is not None:
                    raise _error(f"sources.{i}.weight: only used with modality_split")
            if self.size is not None and all(s.count is not None for s in self.sources):
                total = sum(s.count or 0 for s in self.sources)
                if total != self.size:
                    if not total:
                        raise _error(f"size: {self.size} rows asked but the sources' counts are all 0")
                    before = [s.count or 0 for s in self.sources]
                    after = apportion(self.size, before)
                    for s, n in zip(self.sources, after, strict=True):
                        s.count = n
                    counts = {s.name: [b, a] for s, b, a in zip(self.sources, before, after, strict=True)}
                    self._record_scaling(total, counts)
        return self

    def _record_scaling(self, total: int, counts: dict[str, list[int]]) -> None:
        """Scale a validation count by the same factor (a fraction stays) and remember what changed."""
        size = self.size or total
        self._scaled = {"from": total, "to": size, "counts": counts}
        if self.validation >= 1:
            n = round(self.validation * size / total)
            self._scaled["validation"] = [self.validation, n]
            self.validation = n
