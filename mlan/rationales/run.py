"""`generate_rationales`: ask a teacher for a rationale of every row a mixture spec draws.

The rows are the spec's own: the mixture stage draws them (same sources, adapters, seed, sampling and
hygiene as `mlan build-mixture`) and hands each to this stage before rendering it, so a row's id here is
its id in the mixture, and `targets: rationale` later joins them one to one. A row drawn several times
(`replace: true`) is explained once, as MLAN's rationale files hold one rationale per source row.

Order of work: every check that can fail on user input (sources, exemplars, the store, the teachers'
configs, or the server's answer to a first request) before the rows are drawn; the rows before any weights
load; then generation, each answer recorded as it comes (in any order: a continuous batch or a server ends
rows as they end), appended to the store at least every `_FLUSH_SECONDS`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlan.config.mixture import RATIONALE_ADAPTERS, MixtureSpec
from mlan.console import quiet_logger
from mlan.data.fill import stable_int
from mlan.errors import MlanError
from mlan.rationales import prompts
from mlan.rationales.clean import clean, status_of
from mlan.rationales.store import (
    Appender,
    check_shard,
    identity,
    open_store,
    read_records,
    scratch_folder,
    store_dir,
    summarize,
    write_summary,
)
from mlan.rationales.teacher import Ask, Generation, Sampling, Teacher, TransformersTeacher, VllmTeacher, check_teacher
from mlan.schemas import Item

log = logging.getLogger(__name__)

# progress(rows done, rows to do, new tokens so far)
Progress = Callable[[int, int, int], None]

# Records are appended in groups: every `batch_size` answers or this many seconds, whichever comes first
# (a kill loses at most that much work; an fsync per row would cost more than a small model's row).
_FLUSH_SECONDS = 10.0


@dataclass
class Row:
    """One drawn row, as the teacher will be asked about it."""

    id: str
    source: str
    adapter: str
    vision: bool
    item: Item
    raw: dict[str, Any]  # the source row (language rows) as the dataset holds it, images left out
    image: Path | None = None  # an image row's picture, saved while the rows are drawn
    prompt: str = ""
    shared: str = ""  # the prompt's start that rows shown the same exemplar share
    exemplar: int = 0


@dataclass
class RationaleResult:
    """What a run did (the store's summary covers every row recorded so far, of every shard)."""

    store: Path
    summary: dict[str, Any]
    generated: int
    already_done: int
    rows: int
    shard: tuple[int, int]
    seconds: float
    teachers: list[str] = field(default_factory=list)


def _check_sources(spec: MixtureSpec) -> None:
    for i, s in enumerate(spec.sources):
        if s.adapter not in RATIONALE_ADAPTERS:
            raise MlanError(
                f"sources.{i} ({s.name}): adapter {s.adapter!r} rows carry no gold answer for a teacher to explain "
                f"(rationales need {', '.join(RATIONALE_ADAPTERS)})"
            )
    unknown = sorted(set(spec.rationales.exemplars) - {s.name for s in spec.sources})
    if unknown:
        raise MlanError(f"rationales.exemplars.{unknown[0]}: no source of that name in the spec")


def _drawing_spec(spec: MixtureSpec) -> MixtureSpec:
    """The spec as drawn for the teacher: direct-answer targets, and without what only counts or reports
    (token counting, a contamination check that drops nothing), which would reach for the hub."""
    update: dict[str, Any] = {"targets": "answer", "tokenizer": None, "image_tokens": 576}
    if not spec.contamination.drop:
        update["contamination"] = spec.contamination.model_copy(update={"evals": []})
    return spec.model_copy(update=update)


def draw_rows(spec: MixtureSpec, image_dir: Path) -> list[Row]:
    """Every source row the spec draws, in the mixture stage's order; image rows' pictures go to `image_dir`."""
    from mlan.data.mixture import build_mixture

    rows: list[Row] = []

    def collect(src, row_id: str, row: dict, item: Item, blobs: list) -> None:
        vision = bool(blobs)
        image = None
        if vision:
            image = image_dir / f"{len(rows)}"
            image.write_bytes(blobs[0][0])
        raw = row
        if vision:  # VQAv2's and A-OKVQA's question fields only; the image is in its file
            named = src.adapter in ("vqav2", "aokvqa")
            raw = {k: v for k, v in row.items() if named and k in ("question", "multiple_choice_answer", "choices")}
        item.images = None
        rows.append(Row(row_id, src.name, src.adapter, vision, item, raw, image))

    # The mixture stage's own lines (per source, the scratch folder) would read as if a mixture were built.
    with quiet_logger("mlan.data"), tempfile.TemporaryDirectory(prefix=".rationales-draw-", dir=image_dir) as scratch:
        build_mixture(_drawing_spec(spec), Path(scratch) / "mixture", on_row=collect)
    return rows


def select(rows: list[Row], *, limit: int | None, shard: tuple[int, int]) -> list[Row]:
    """`--limit N`: the first N rows drawn of each source; `--shard i/N`: the rows whose id hashes to i."""
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for r in rows:
            seen[r.source] = seen.get(r.source, 0) + 1
            if seen[r.source] <= limit:
                kept.append(r)
        rows = kept
    i, n = shard
    return [r for r in rows if stable_int(r.id) % n == i]


def build_prompts(spec: MixtureSpec, rows: list[Row], exemplars: dict[str, prompts.Exemplars], eos: str) -> None:
    """Each row's prompt, with its exemplar drawn by the spec's seed and the row's id."""
    s = spec.rationales
    for r in rows:
        ex_rows = exemplars[r.source].rows
        r.exemplar = prompts.exemplar_index(spec.seed, r.id, len(ex_rows))
        ex = ex_rows[r.exemplar]
        instruction = _instruction(spec, r.vision)
        if r.vision:
            r.prompt = prompts.vision_prompt(
                r.adapter, r.raw, r.item, ex, instruction=instruction, wording=s.answer_wording
            )
        else:
            r.prompt = prompts.language_prompt(
                r.adapter, r.raw, r.item, ex, eos=eos, instruction=instruction, wording=s.answer_wording
            )
            r.shared = prompts.language_shot(r.adapter, ex, eos=eos, instruction=instruction, wording=s.answer_wording)


def _instruction(spec: MixtureSpec, vision: bool) -> str:
    """The spec's instruction, or MLAN's for the row's kind (the vision tasks' text differs by two spaces)."""
    if spec.rationales.instruction is not None:
        return spec.rationales.instruction
    return prompts.VISION_INSTRUCTION if vision else prompts.INSTRUCTION


def generate_rationales(
    spec: MixtureSpec,
    *,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Progress | None = None,
) -> RationaleResult:
    """Generate (or finish generating) the rationales of `spec`'s rows into its store; returns what was done."""
    t0 = time.perf_counter()
    s = spec.rationales
    _check_sources(spec)
    folder = store_dir(spec)
    if not 0 <= shard[0] < shard[1]:
        raise MlanError(f"--shard {shard[0]}/{shard[1]}: expected i/N with 0 <= i < N")
    modalities = {src.modality for src in spec.sources}
    if s.engine == "openai":  # the teachers are names a server serves: asked before the rows are drawn
        from mlan.rationales.server import check_server

        check_server(s, [s.teacher] * ("language" in modalities) + [s.vision_teacher] * ("vision" in modalities))
    else:
        if "language" in modalities:
            check_teacher(s.teacher, vision=False)
        if "vision" in modalities:
            check_teacher(s.vision_teacher, vision=True)
    exemplars = {
        src.name: prompts.load_exemplars(src.name, src.adapter, s.exemplars.get(src.name)) for src in spec.sources
    }
    open_store(folder, identity(spec, {k: f"{e.origin} sha256:{e.sha256}" for k, e in exemplars.items()}))
    check_shard(folder, shard)

    with scratch_folder(folder) as scratch:
        drawn = draw_rows(spec, scratch)
        rows = select(drawn, limit=limit, shard=shard)
        done = read_records(folder, repair=True)
        todo = [r for r in rows if r.id not in done]
        log.info(
            "%d rows drawn; %d in this run (%s), %d already in %s",
            len(drawn),
            len(rows),
            f"shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "all shards",
            len(rows) - len(todo),
            folder,
        )
        teachers: list[str] = []
        new_tokens = 0
        appender = Appender(folder, shard)
        try:
            finished = 0
            for vision in (False, True):
                part = [r for r in todo if r.vision == vision]
                if not part:
                    continue
                ref = s.vision_teacher if vision else s.teacher
                teacher = open_teacher(ref, vision=vision, settings=s)
                teachers.append(ref)
                build_prompts(spec, part, exemplars, teacher.eos_token)
                lengths = teacher.prompt_tokens([r.prompt for r in part])
                for tokens in _ask(spec, teacher, part, lengths, appender):
                    finished += 1
                    new_tokens += tokens
                    if progress:
                        progress(finished, len(todo), new_tokens)
                del teacher
        finally:
            appender.close()
    summary = summarize(read_records(folder))
    write_summary(folder, summary)
    return RationaleResult(
        folder, summary, len(todo), len(rows) - len(todo), len(rows), shard, time.perf_counter() - t0, teachers
    )


def _sampling(spec: MixtureSpec, row: Row) -> Sampling:
    s = spec.rationales
    if row.vision:  # MLAN's vision teacher decoded greedily (rationales.md section 3)
        return Sampling(0.0, 1.0, s.vision_max_new_tokens)
    return Sampling(s.temperature, s.top_p, s.max_new_tokens_by_adapter.get(row.adapter, s.max_new_tokens))


def open_teacher(ref: str, *, vision: bool, settings) -> Teacher:
    """The teacher the settings ask for (`rationales.engine`)."""
    if settings.engine == "vllm":
        return VllmTeacher(
            ref,
            vision=vision,
            dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
        )
    if settings.engine == "openai":
        from mlan.rationales.server import ServerTeacher

        return ServerTeacher(ref, vision=vision, settings=settings)
    return TransformersTeacher(ref, vision=vision, device=settings.device, dtype=settings.dtype)


def stop_texts(spec: MixtureSpec, vision: bool, eos_token: str) -> tuple[str, ...]:
    """Where a teacher that did not stop starts another example, its rationale has ended: the EOS text, the
    vision prompts' separator, the start of the instruction."""
    return tuple(x for x in (eos_token, prompts.VISION_SEPARATOR, _instruction(spec, vision)[:40]) if x)


def _seed(spec: MixtureSpec, row: Row) -> int:
    """A row's seed: the spec's seed and the row's id, so a resumed or re-sharded run draws the same."""
    return stable_int(f"{spec.seed}/{row.id}") % 2**31


def _ask(spec: MixtureSpec, teacher: Teacher, rows: list[Row], lengths: list[int], appender: Appender):
    """Every row through the teacher, longest prompts first (a batch pads little; fixed by the rows alone,
    so a resumed run asks in the same order); each answer recorded as it comes. Yields its new tokens."""
    s = spec.rationales
    stops = stop_texts(spec, teacher.vision, teacher.eos_token)
    order = sorted(range(len(rows)), key=lambda i: (-lengths[i], rows[i].id))
    asks = [
        Ask(
            rows[i].prompt,
            rows[i].image,
            _sampling(spec, rows[i]),
            _seed(spec, rows[i]),
            stops,
            rows[i].shared,
        )
        for i in order
    ]
    pending: list[dict] = []
    last = flushed = time.perf_counter()
    try:
        for k, g in teacher.stream(asks, s.batch_size):
            now = time.perf_counter()
            i = order[k]
            # A row's seconds: the wall time since the previous answer, so they add up to the run's time however
            # many rows were in flight.
            pending.append(_record(spec, teacher, rows[i], asks[k], g, lengths[i], now - last))
            last = now
            if len(pending) >= s.batch_size or now - flushed >= _FLUSH_SECONDS:
                appender.write(pending)
                pending, flushed = [], now
            yield g.new_tokens
    finally:  # answers already in hand are kept when the teacher fails (a server gone): a resume skips them
        appender.write(pending)


def _record(
    spec: MixtureSpec, teacher: Teacher, r: Row, ask: Ask, g: Generation, prompt_tokens: int, seconds: float
) -> dict[str, Any]:
    s = spec.rationales
    rationale, finished = clean(g.text, g.finished, stops=list(ask.stop))
    record = {
        "id": r.id,
        "source": r.source,
        "modality": "vision" if r.vision else "language",
        "teacher": teacher.name,
        "engine": teacher.engine,
        "settings": {
            "temperature": ask.sampling.temperature,
            "top_p": ask.sampling.top_p,
            "max_new_tokens": ask.sampling.max_new_tokens,
            "seed": ask.seed,
            "answer_wording": s.answer_wording,
            "check_answer": s.check_answer,
        },
        "exemplar": r.exemplar,
        "prompt": r.prompt,
        "gold": r.item.target(),
        "raw": g.text,
        "rationale": rationale,
        "status": status_of(rationale, finished, r.item, s.check_answer),
        "prompt_tokens": prompt_tokens,
        "new_tokens": g.new_tokens,
        "seconds": round(seconds, 4),
    }
    if g.model is not None:  # what a server says of itself and of the request
        record["server"] = {
            "model": g.model,
            "endpoint": g.endpoint,
            "prompt_tokens": g.prompt_tokens,
            "retries": g.retries,
        }
    return record
