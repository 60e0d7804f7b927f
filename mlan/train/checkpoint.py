"""Resumable checkpoints: where they go (beside the output folder), which one is complete, whether
it belongs to this run (recipe, rows, start model, mlan version), and loading a checkpoint's LLaVA weights back whatever key layout the
files use (Wings learners from beside them). Also the checksum that compares the processes' copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from mlan import kinds
from mlan.config.recipe import SFTRecipe
from mlan.errors import MlanError
from mlan.io import atomic_write_json, diff_paths

log = logging.getLogger(__name__)

# Where TensorBoard event files go: `<output>.checkpoints/tensorboard/` while the run lasts (kept
# for a resumed run), then `<output>/tensorboard/`.
TENSORBOARD_DIR = "tensorboard"


def checkpoint_dir(out: Path) -> Path:
    """Where the resumable checkpoints of the run writing `out` live: beside it, so a killed run leaves
    them for `--resume` while the output folder itself only ever appears complete."""
    return out.parent / f"{out.name}.checkpoints"


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer state was written (the Trainer writes it last)."""
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


# What a run was made of, recorded beside its checkpoints when it starts and compared before a resume:
# resuming is only sound when the same recipe trains the same start model on the same rows with the same
# code. Comparing the recipe alone let a mixture rebuilt at the same path (other rows) or another model
# saved at the same path resume silently.
RUN_RECORD = "run_record.json"
# Start-model files hashed whole up to this size (config, tokenizer, processor, weight index, a small
# model's weights); larger weight files are fingerprinted by size and sampled blocks (below).
WHOLE_FILE_LIMIT = 64 << 20
SAMPLED_BLOCKS, BLOCK_SIZE = 64, 64 << 10
SAVED_DATASET_FILE = re.compile(r"data-\d+-of-\d+\.arrow|state\.json|dataset_info\.json|dataset_dict\.json")
# The parts of a record, as a refusal names them.
RECORD_PARTS = {
    "recipe": "the recipe",
    "mixture": "the mixture's rows",
    "model": "the start model",
    "mlan_version": "the mlan version",
}


def recipe_fingerprint(recipe: SFTRecipe) -> dict[str, Any]:
    """The parts of a recipe that must not change between a run and its resumption."""
    d = recipe.model_dump(mode="json")
    d.pop("output", None)
    d.pop("name", None)
    d.pop("description", None)
    # Trackers do not change the training: a resumed run may report elsewhere.
    d["training"].pop("report_to", None)
    return d


def file_digest(path: Path) -> str:
    """SHA-256 of a file; for a file over WHOLE_FILE_LIMIT, of its size and SAMPLED_BLOCKS evenly spaced
    blocks (first and last included). A 7B model's 13 GB would take a minute to hash whole at every
    start; any retraining or replacement changes every block, so the sample tells models apart."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return h.hexdigest()
        h.update(f"sampled:{size}".encode())
        last = size - BLOCK_SIZE
        for i in range(SAMPLED_BLOCKS):
            f.seek(last * i // (SAMPLED_BLOCKS - 1))
            h.update(f.read(BLOCK_SIZE))
    return "sampled:" + h.hexdigest()


def model_identity(path: str, revision: str | None) -> dict[str, Any]:
    """What identifies the start model: for a local folder, a digest of every file that shapes the
    model (configs, tokenizer and processor files, weight index, weights; not its README); for a hub
    id, the id and the commit its config was read at (the hub keeps a commit's files unchanged)."""
    folder = Path(path)
    if not folder.is_dir():
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(path, "config.json", revision=revision))
        # The hub cache keeps each commit's files under snapshots/<commit>/.
        return {"hub": path, "revision": revision, "commit": config.parent.name}
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".md"
    )
    return {"files": {p.name: file_digest(p) for p in files}}


def mixture_identity(mixture_dir: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """What identifies the training rows: the manifest's content hash (build-mixture hashes every row
    in order), else a digest of the saved dataset's files (a folder written some other way)."""
    if manifest and manifest.get("content_hash"):
        return {"content_hash": manifest["content_hash"]}
    # The files save_to_disk wrote, not the cache files a later `map` may leave beside them.
    files = sorted(p for p in mixture_dir.rglob("*") if p.is_file() and SAVED_DATASET_FILE.fullmatch(p.name))
    return {"files": {p.relative_to(mixture_dir).as_posix(): file_digest(p) for p in files}}


def run_record(recipe: SFTRecipe, *, mixture_dir: Path, manifest: dict[str, Any] | None, model_path: str) -> dict:
    """The record of what this run is made of: recipe, rows, start model, mlan version."""
    from mlan import __version__

    return {
        "recipe": recipe_fingerprint(recipe),
        "mixture": mixture_identity(mixture_dir, manifest),
        "model": model_identity(model_path, recipe.model.revision),
        "mlan_version": __version__,
    }


def describe_changes(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """What differs between two run records, part by part: `the recipe (training.learning_rate)`."""
    changed: dict[str, list[str]] = {}
    for path in diff_paths(saved, current):
        part, _, rest = path.partition(".")
        changed.setdefault(part, []).append(rest)
    said = []
    for part, rests in changed.items():
        details = [r for r in rests if r]
        if part == "mlan_version":
            details = [f"{saved.get(part)} -> {current.get(part)}"]
        name = RECORD_PARTS.get(part, part)
        said.append(f"{name} ({', '.join(details[:3])}{', ...' if len(details) > 3 else ''})" if details else name)
    return "; ".join(said)


def decide_resume(record: dict[str, Any], ckpt_dir: Path, resume: bool | None) -> Path | None:
    """The checkpoint to resume from (None: start fresh), checking it belongs to this run: the same
    recipe, rows, start model and mlan version (`record`, from `run_record`)."""
    last = last_complete_checkpoint(ckpt_dir)
    if resume is False:
        return None
    if last is None:
        if resume:
            raise MlanError(f"--resume: no complete checkpoint in {ckpt_dir}")
        return None
    saved = ckpt_dir / RUN_RECORD
    if not saved.is_file():
        raise MlanError(
            f"{ckpt_dir}: checkpoints without a run record ({RUN_RECORD}), so nothing says what they were "
            "trained from; pass --no-resume to discard them and start over"
        )
    try:
        recorded = json.loads(saved.read_text(encoding="utf-8"))
    except ValueError as e:
        raise MlanError(f"{saved}: invalid JSON ({e}); pass --no-resume to discard the checkpoints") from None
    if recorded != record:
        raise MlanError(
            f"{ckpt_dir}: checkpoints of another run: {describe_changes(recorded, record)} changed; "
            "pass --no-resume to discard them and start over"
        )
    return last


def start_checkpoints(record: dict[str, Any], ckpt_dir: Path, resume_from: Path | None, state) -> None:
    """The main process clears old checkpoints (unless resuming) and writes the run record; the others
    wait for it, then every process checks that it sees that record and made the same resume decision.

    Checkpoints are written by the main process (DeepSpeed and FSDP add each rank's shard beside them) and
    read back by every process on resume: the checkpoint folder must be on a filesystem every node shares.
    A node that cannot see it would decide alone to start over while the others resume; every process
    stops instead, in one line naming the node."""
    if state.is_main_process:
        if resume_from is None and ckpt_dir.exists():
            log.info("starting over: removing old checkpoints in %s", ckpt_dir)
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ckpt_dir / RUN_RECORD, record)
    state.wait_for_everyone()
    if state.num_processes == 1:
        return
    import socket

    from accelerate.utils import gather_object

    sees = (ckpt_dir / RUN_RECORD).is_file()
    check_shared_view(ckpt_dir, gather_object([(state.process_index, socket.gethostname(), sees, str(resume_from))]))


def check_shared_view(ckpt_dir: Path, views: list[tuple[int, str, bool, str]]) -> None:
    """Every process's view of the checkpoint folder, (process, host, sees the run record, resumes from), must
    be the main process's: one line naming the first process that differs."""
    blind = [(rank, host) for rank, host, ok, _ in views if not ok]
    if blind:
        rank, host = blind[0]
        raise MlanError(
            f"{ckpt_dir}: process {rank} on {host} cannot see the run record the main process wrote there; "
            "the output folder must be on a filesystem every node shares (set output.dir to one)"
        )
    if len({r for *_, r in views}) > 1:
        raise MlanError(f"{ckpt_dir}: the processes found different checkpoints to resume from: {sorted(views)}")


_WRAPPER_SEGMENTS = re.compile(r"(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|module|_orig_mod)\.")


def unwrapped_name(name: str) -> str:
    """A parameter's name without the segments DDP / FSDP / activation checkpointing / compile add."""
    return _WRAPPER_SEGMENTS.sub("", name)


# save_pretrained writes LLaVA weights under the legacy llava-hf names (`language_model.model.*`, ...),
# while the model's own names are `model.language_model.*`, ... The Trainer resumes with
# `load_state_dict(strict=False)` on the raw file, so on a LLaVA model it silently loads nothing and
# training continues from the base weights with the restored optimizer. from_pretrained knows the
# renaming but builds a second model; the prefix table in mlan.kinds is all it takes.


def checkpoint_weight_files(folder: Path) -> list[Path]:
    """A checkpoint's safetensors weight files (its shards, or the one file); none if it has none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def load_llava_weights(model, folder: Path) -> None:
    """Load a checkpoint's weights into a LLaVA model, whichever key layout the files use; strict."""
    from safetensors.torch import load_file

    own = set(model.state_dict())
    state = {}
    for f in checkpoint_weight_files(folder):
        for key, value in load_file(str(f), device="cpu").items():
            if key not in own:
                key = kinds.current_name(key) if kinds.current_name(key) in own else key
            state[key] = value
    result = model.load_state_dict(state, strict=False)
    # A tied head is not saved, and may be missing; transformers 5 lists the keys that could be tied
    # (`_tied_weights_keys`) whether or not this model ties them, so the tensors themselves decide.
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    ties = head is not None and embed is not None and head.weight is embed.weight
    tied = set(getattr(model, "_tied_weights_keys", None) or []) if ties else set()
    # Wings learners are stored apart (wings.safetensors) and restored by the caller.
    missing = [k for k in result.missing_keys if k not in tied and ".wings." not in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{folder}: checkpoint weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def load_checkpoint(model, folder: Path) -> None:
    """A plain (not sharded, not PEFT) model's weights from a checkpoint: the LLaVA base, and the Wings
    learners when the model has them (the checkpoint's model.safetensors holds the base only)."""
    # mlan.wings imports torch; this module stays light (mlan.train.sft imports it at its top).
    from mlan.wings import get_runtime, load_wings_weights

    load_llava_weights(model, folder)
    if get_runtime(model) is not None:
        load_wings_weights(model, folder)


def checksum(model) -> str:
    """SHA-256 over every parameter of this process's copy of the model, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def rank_checksums(trainer, processes: int) -> list[str]:
    """Every process's checksum of its model, gathered; empty when there is nothing to compare.

    Under DDP every process holds the whole model, and all copies must be equal; FSDP and DeepSpeed
    shard it, so there is no whole copy per process to compare."""
    if processes == 1 or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return []
    from accelerate.utils import gather_object

    return gather_object([checksum(trainer.accelerator.unwrap_model(trainer.model))])
