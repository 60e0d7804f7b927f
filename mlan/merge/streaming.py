"""Merging tensor by tensor: read one block of rows of each model, merge, append it to the output shard.

Peak memory stays at a few blocks of rows (16 MB float32 buffers; for TIES in `tensor` scope also
one float32 copy of the tensor's magnitudes, so near the largest tensor), not the size of one
model, let alone two. The output mirrors the multimodal model's sharding and key layout, so
`from_pretrained` loads it exactly as it loads the input; the files are streamed by
`mlan.merge.writer`. TIES in `global` scope first streams the task vector to find its one
threshold (`mlan.merge.sparsify`), then merges as above.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlan import kinds
from mlan.errors import MlanError
from mlan.io import atomic_dir, atomic_write_json, check_output_dir
from mlan.merge.layout import (
    SAFETENSORS_DTYPES,
    Checkpoint,
    TensorInfo,
    causal_lm_names,
    check_architectures,
    check_tokenizers,
    detect_layout,
    is_vocab_tensor,
    llm_ties_embeddings,
    lm_name,
    open_checkpoint,
    resolve_model_dir,
)
from mlan.merge.methods import add_task_vector, merge_tensor, task_vector
from mlan.merge.sparsify import Trim, global_trim, tensor_trim
from mlan.merge.writer import SafetensorsWriter, _tensor_bytes
from mlan.runs import RUNS_DIR
from mlan.wings.save import WINGS_WEIGHTS

if TYPE_CHECKING:
    from mlan.config.merge import MergeConfig

log = logging.getLogger(__name__)

MANIFEST = "merge_manifest.json"
# Elements merged at a time: 4M, so float32 work buffers are 16 MB each.
# Part of DARE's seeding (one mask per block), so changing it changes DARE results.
CHUNK_ELEMENTS = 1 << 22


@dataclass
class MergeResult:
    """What one merge wrote and did."""

    out: Path
    method: str
    alpha: float
    density: float
    seed: int
    layout: str
    merged_tensors: int
    copied_tensors: int
    kept_vocab_rows: int
    shards: int
    bytes_written: int
    seconds: float
    sparsify_scope: str = "tensor"
    merged_names: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-tensor list)."""
        d = asdict(self)
        d.pop("merged_names")
        d["out"] = str(self.out)
        return d


@dataclass
class _Plan:
    """One output tensor: where it comes from and how it is made."""

    key: str  # key in the multimodal model and in the output
    mm: TensorInfo
    llm: TensorInfo | None = None  # None: copied from the multimodal model bit for bit
    name: str = ""  # the original LLM's (causal-LM) name, for messages and DARE seeds
    shared_rows: int | None = None  # vocabulary tensors: rows shared with the original LLM


def plan_merge(mm: Checkpoint, llm: Checkpoint) -> tuple[str, list[_Plan], list[str]]:
    """Pair every language-model tensor of the multimodal model with the original LLM's.

    Returns the multimodal model's key layout, one plan per multimodal tensor (sorted by key) and
    the original LLM's tensors left unused. Raises `MlanError` naming the first tensor that has no
    counterpart or whose shape does not correspond.
    """
    layout = detect_layout(mm.tensors)
    if layout is None:
        raise MlanError(
            f"{mm.path}: no language-model tensors found (expected language_model.model.*, "
            "model.language_model.* or, for Qwen2.5-VL, model.layers.* beside visual.* keys); is this a multimodal checkpoint?"
        )
    names = causal_lm_names(llm.tensors)
    used: set[str] = set()
    plans: list[_Plan] = []
    for key in sorted(mm.tensors):
        info = mm.tensors[key]
        name = lm_name(key, layout)
        if name is None:
            plans.append(_Plan(key=key, mm=info))
            continue
        if not info.is_float:
            log.warning("%s: %s tensor, not merged (kept from the multimodal model)", key, info.dtype)
            plans.append(_Plan(key=key, mm=info, name=name))
            continue
        source = names.get(name)
        if source is None and name == "lm_head.weight" and llm_ties_embeddings(llm):
            # A tied original LLM stores no head: its output layer is its input embedding.
            source = names.get("model.embed_tokens.weight")
        if source is None:
            raise MlanError(
                f"tensor {name}: the multimodal model has it ({key}) but the original LLM {llm.path} does not; "
                "the models do not correspond"
            )
        other = llm.tensors[source]
        used.add(source)
        shared = None
        if info.shape != other.shape:
            vocab_ok = (
                is_vocab_tensor(name)
                and len(info.shape) == len(other.shape)
                and info.shape[1:] == other.shape[1:]
                and other.shape[0] < info.shape[0]
            )
            if not vocab_ok:
                raise MlanError(
                    f"tensor {name}: shape {list(info.shape)} in the multimodal model ({key}) but "
                    f"{list(other.shape)} in the original LLM ({source}); the models do not correspond"
                )
            shared = other.shape[0]
        if not other.is_float:
            raise MlanError(f"tensor {name}: {other.dtype} in the original LLM ({source}), expected floating point")
        plans.append(_Plan(key=key, mm=info, llm=other, name=name, shared_rows=shared))
    unused = sorted(k for k in llm.tensors if k not in used and not k.endswith("rotary_emb.inv_freq"))
    return layout, plans, unused


def _blocks(plan: _Plan) -> list[tuple[int, int]]:
    """The blocks of rows a tensor is read in: CHUNK_ELEMENTS at a time (one block for a scalar)."""
    shape = plan.mm.shape
    if not shape:
        return [(0, 1)]
    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:])))
    return [(start, min(shape[0], start + step)) for start in range(0, shape[0], step)]


def _shared_rows(plan: _Plan) -> int:
    return plan.mm.shape[0] if plan.shared_rows is None else plan.shared_rows


def _pair(plan: _Plan, start: int, stop: int):
    """Rows start:stop of the multimodal tensor, the original LLM's rows among them, and where those end."""
    info, other = plan.mm, plan.llm
    if not info.shape:
        return info.file.read(info.key), other.file.read(other.key), stop
    mid = min(stop, _shared_rows(plan))
    return info.file.read_rows(info.key, start, stop), other.file.read_rows(other.key, start, mid), mid


def _magnitudes(plans: Iterable[_Plan], work=None) -> Iterator:
    """|task vector| of the shared rows, flat, block by block, tensor by tensor (in `work` dtype if given)."""
    for plan in plans:
        for start, stop in _blocks(plan):
            if plan.mm.shape and start >= _shared_rows(plan):
                break  # rows the original LLM lacks are no part of the task vector
            base, other, mid = _pair(plan, start, stop)
            delta = task_vector(base[: mid - start] if plan.mm.shape else base, other).abs_().view(-1)
            yield delta if work is None else delta.to(work)


def _task_entries(plan: _Plan) -> int:
    """Entries of a tensor's task vector: its shared rows only."""
    return _shared_rows(plan) * math.prod(plan.mm.shape[1:]) if plan.mm.shape else 1


def _tensor_trim(plan: _Plan, density: float) -> Trim:
    """TIES' per-tensor trim: one float32 copy of the tensor's magnitudes for the k-th value."""
    import torch

    flat, at = None, 0
    for block in _magnitudes([plan]):
        if flat is None:
            flat = torch.empty(_task_entries(plan), dtype=block.dtype)
        flat[at : at + block.numel()] = block
        at += block.numel()
    return tensor_trim(flat, density)


def _merged_chunks(
    plan: _Plan, method: str, alpha: float, density: float, seed: int, trim: Trim | None = None
) -> Iterator[memoryview]:
    """The merged tensor's bytes, block of rows by block of rows.

    Every method but TIES is elementwise, so a large tensor (the embedding, the head) is merged
    CHUNK_ELEMENTS at a time and memory stays at a few blocks whatever the model's size. TIES
    trims by a magnitude threshold: `trim` when given (the `global` scope's one threshold, shared by
    every tensor), else this tensor's own, from a first pass over its blocks; it is then applied
    block by block, which gives exactly the whole-tensor result. DARE seeds each block's mask from
    the tensor's name and the block's index.
    """
    import torch

    info = plan.mm
    dtype = getattr(torch, SAFETENSORS_DTYPES[info.dtype])
    if trim is None and method == "ties" and density < 1:
        trim = _tensor_trim(plan, density)
    blocks = _blocks(plan)
    for i, (start, stop) in enumerate(blocks):
        if info.shape and start >= _shared_rows(plan):
            # Rows the original LLM lacks (added tokens such as <image>) stay as they are.
            out = info.file.read_rows(info.key, start, stop)
        else:
            base, other, mid = _pair(plan, start, stop)
            shared = base[: mid - start] if info.shape else base
            if trim is not None:
                delta = task_vector(shared, other)
                trim.apply(delta)
                merged = add_task_vector(shared, delta, alpha)
            else:
                name = plan.name if len(blocks) == 1 else f"{plan.name}[{i}]"
                merged = merge_tensor(shared, other, method, alpha, density, seed, name)
            out = merged if mid == stop or not info.shape else torch.cat([merged, base[mid - start :]])
            del base, other, merged
        if out.dtype != dtype:
            raise RuntimeError(f"{plan.key}: merged dtype {out.dtype} differs from the input's {info.dtype}")
        yield from _tensor_bytes(out)


def whole_vector_trim(plans: list[_Plan], density: float) -> Trim | None:
    """`sparsify_scope: global`: the one TIES threshold over every merged tensor's task vector, in
    `plans`' order (the write order, which breaks ties at the threshold), streamed (`global_trim`)."""
    import torch

    merged = [p for p in plans if p.llm is not None]
    wide = any(SAFETENSORS_DTYPES[p.mm.dtype] == "float64" for p in merged)
    work = torch.float64 if wide else torch.float32
    total = sum(_task_entries(p) for p in merged)
    trim = global_trim(lambda: _magnitudes(merged, work), density, work, total)
    if trim is not None:
        threshold = float(trim.threshold)
        log.info("global trim: keeping %d of %d entries (|delta| >= %.3g)", trim.kept, trim.total, threshold)
    return trim


def _output_shards(mm: Checkpoint, plans: list[_Plan]) -> list[tuple[str, list[_Plan]]]:
    """One output shard per input weight file, named as transformers names safetensors shards."""
    by_file: dict[Path, list[_Plan]] = {f.path: [] for f in mm.files}
    for p in plans:
        by_file[p.mm.file.path].append(p)
    groups = [g for g in by_file.values() if g]
    if len(groups) == 1:
        return [("model.safetensors", groups[0])]
    n = len(groups)
    return [(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def _copy_side_files(mm: Checkpoint, out: Path) -> list[str]:
    """Config, processor, tokenizer, chat template, mixture manifest...: every top-level non-weight file."""
    copied = []
    for f in sorted(mm.path.iterdir()):
        if not f.is_file() or f.name in mm.weight_names or f.name == MANIFEST:
            continue
        # A Wings model's learners (wings.safetensors beside wings_config.json) are carried over unchanged:
        # merging touches only the base language model's tensors, and the learners read its hidden states
        # at the same size, so the merged folder is again a Wings folder (`mlan.wings.load_wings_model`).
        if f.name != WINGS_WEIGHTS and (f.suffix in (".safetensors", ".bin", ".pt", ".pth") or f.name.startswith(".")):
            continue  # other weights or training state: not part of the merged model
        shutil.copy2(f, out / f.name)
        copied.append(f.name)
    return copied


def _verify_output(out: Path, plans: list[_Plan], merged: set[str]) -> None:
    """Re-read the written headers: every tensor present with its shape and dtype, every LM tensor merged."""
    written = open_checkpoint(out, "merged model").tensors
    expected = {p.key: p.mm for p in plans}
    if set(written) != set(expected):
        missing = sorted(set(expected) - set(written))[:3]
        extra = sorted(set(written) - set(expected))[:3]
        raise RuntimeError(f"merged model keys differ from the multimodal model's: missing {missing}, extra {extra}")
    for key, info in written.items():
        if (info.dtype, info.shape) != (expected[key].dtype, expected[key].shape):
            raise RuntimeError(f"{key}: written as {info.dtype}{list(info.shape)}, expected {expected[key].dtype}")
    should = {p.key for p in plans if p.llm is not None}
    if not should or should != merged:
        raise RuntimeError(
            f"{len(should - merged)} language-model tensors were not merged "
            f"(e.g. {sorted(should - merged)[:3]}); refusing to leave a partial merge"
        )


def default_out(config: MergeConfig) -> Path:
    """Where a merge is written when no `out` is given:
    `runs/merges/<model>-<method>[-global]-a<alpha>[-d<density>]`."""
    name = Path(str(config.multimodal).rstrip("/")).name or "model"
    method = config.method + ("-global" if config.sparsify_scope == "global" else "")
    if config.is_sweep:
        return RUNS_DIR / "merges" / f"{name}-{method}-sweep"
    tag = f"{name}-{method}-a{config.alphas[0]:g}"
    if config.densities[0] != 1.0:
        tag += f"-d{config.densities[0]:g}"
    return RUNS_DIR / "merges" / tag


def prepare(config: MergeConfig) -> tuple[Checkpoint, Checkpoint, str, list[_Plan], list[str]]:
    """Resolve and check both models and pair their tensors; reads headers only, writes nothing."""
    mm_dir = resolve_model_dir(config.multimodal, "multimodal model")
    llm_dir = resolve_model_dir(config.original, "original LLM")
    mm = open_checkpoint(mm_dir, "multimodal model")
    if kinds.is_original_llava_config(mm.config):
        raise kinds.original_layout_error(config.multimodal, "multimodal model")
    if not kinds.is_llava_config(mm.config):
        raise MlanError(
            f"multimodal model {mm_dir}: not a LLaVA model (model_type {mm.config.get('model_type')!r}); "
            "merge needs a LLaVA, LLaVA-NeXT, LLaVA-OneVision or Qwen2.5-VL checkpoint"
        )
    llm = open_checkpoint(llm_dir, "original LLM")
    if "vision_config" in llm.config or kinds.is_original_llava_config(llm.config):
        raise MlanError(f"original LLM {llm_dir}: is a multimodal model; pass the text-only LLM it was built from")
    check_architectures(mm, llm)
    layout, plans, unused = plan_merge(mm, llm)
    rows = [p.shared_rows or p.mm.shape[0] for p in plans if p.llm is not None and is_vocab_tensor(p.name)]
    if rows:
        check_tokenizers(mm, llm, min(rows))
    return mm, llm, layout, plans, unused


def _write_shards(
    tmp: Path,
    shards: list[tuple[str, list[_Plan]]],
    config: MergeConfig,
    alpha: float,
    density: float,
    trim: Trim | None = None,
) -> tuple[set[str], int, int]:
    """Stream every shard (merged language-model tensors, copied others) and the index of several;
    `trim` is the global scope's one TIES threshold (None: per tensor).

    Returns the merged tensor keys, the most vocabulary rows kept from the multimodal model, the bytes written.
    """
    merged: set[str] = set()
    kept_rows = written = 0
    weight_map: dict[str, str] = {}
    for i, (fname, group) in enumerate(shards):
        writer = SafetensorsWriter(tmp / fname, [(p.key, p.mm.dtype, p.mm.shape, p.mm.nbytes) for p in group])
        try:
            for p in group:
                if p.llm is None:
                    writer.write(p.key, p.mm.file.raw_chunks(p.key))
                else:
                    writer.write(p.key, _merged_chunks(p, config.method, alpha, density, config.seed, trim))
                    merged.add(p.key)
                    if p.shared_rows is not None:
                        kept_rows = max(kept_rows, p.mm.shape[0] - p.shared_rows)
                weight_map[p.key] = fname
        finally:
            writer.close()
        written += writer.total
        log.info("shard %d/%d written: %s (%.1f MB)", i + 1, len(shards), fname, writer.total / 1e6)
    if len(shards) > 1:
        atomic_write_json(
            tmp / "model.safetensors.index.json",
            {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))},
        )
    return merged, kept_rows, written


def merge_models(config: MergeConfig, overwrite: bool = False) -> MergeResult:
    """Merge `config.original` into the language model of `config.multimodal` and write a LLaVA folder.

    Only language-model tensors are merged (`merged = theta_vlm + alpha * sparsify(theta_llm -
    theta_vlm)`); vision tower and projector are copied bit for bit, as are vocabulary rows the
    original LLM lacks. The output (at `config.out`) keeps the multimodal model's key layout and
    sharding, its config, processor, tokenizer, chat template and mixture manifest, plus
    `merge_manifest.json`. All user errors are raised as `MlanError` before anything is written.
    """
    if config.is_sweep:
        raise MlanError("merge: alpha and density must be single values for one merge (lists make a sweep)")
    out = Path(config.out) if config.out else default_out(config)
    check_output_dir(out, overwrite)
    alpha, density = config.alphas[0], config.densities[0]
    t0 = time.perf_counter()
    mm, _llm, layout, plans, unused = prepare(config)
    if unused:
        log.warning("%d tensors of the original LLM are not used (e.g. %s)", len(unused), ", ".join(unused[:3]))
    shards = _output_shards(mm, plans)
    to_merge = sum(p.llm is not None for p in plans)
    log.info(
        "merging %d language-model tensors (%s, alpha %g, density %g, %s scope), copying %d others, %d shard(s), %s layout",
        *(to_merge, config.method, alpha, density, config.sparsify_scope, len(plans) - to_merge, len(shards), layout),
    )
    trim = None
    if config.sparsify_scope == "global" and config.method == "ties" and density < 1:
        trim = whole_vector_trim([p for _, group in shards for p in group], density)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        side = _copy_side_files(mm, tmp)
        merged, kept_rows, written = _write_shards(tmp, shards, config, alpha, density, trim)
        _verify_output(tmp, plans, merged)
        result = MergeResult(
            out=out,
            method=config.method,
            alpha=alpha,
            density=density,
            seed=config.seed,
            layout=layout,
            merged_tensors=len(merged),
            copied_tensors=len(plans) - len(merged),
            kept_vocab_rows=kept_rows,
            shards=len(shards),
            bytes_written=written,
            seconds=0.0,
            sparsify_scope=config.sparsify_scope,
            merged_names=sorted(p.name for p in plans if p.key in merged),
        )
        result.seconds = round(time.perf_counter() - t0, 3)
        atomic_write_json(
            tmp / MANIFEST,
            {
                **{k: v for k, v in result.summary().items() if k not in ("seconds", "out")},
                "multimodal": str(config.multimodal),
                "original": str(config.original),
                "unused_original_tensors": unused,
                "copied_files": side,
                "formula": "merged = theta_vlm + alpha * sparsify_density(theta_llm - theta_vlm)",
                **({"global_trim": {"kept": trim.kept, "total": trim.total}} if trim is not None else {}),
            },
        )
    log.info("merged model written to %s in %.1f s", out, result.seconds)
    return result
