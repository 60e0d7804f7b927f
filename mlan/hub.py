"""Fail fast, before any work, when a default points at the Hugging Face Hub and the hub
cannot be reached: one line naming what could not be reached and how to use local files,
instead of a traceback or a hang inside a library's network retries."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from mlan.errors import MlanError


@functools.cache
def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached (None when it can): offline mode, or no connection.

    One TCP connect with a short timeout; DNS failure on a machine without network answers
    at once, so this never stalls a command.
    """
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return f"cannot connect to {host}: {e.strerror or e}"
    return None


def _cached_model(ref: str) -> bool:
    """Whether a hub model's config is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(ref, "config.json"), str)
    except Exception:  # an id the cache API rejects is simply not cached
        return False


def model_within_reach(ref: str) -> bool:
    """Whether a model can be opened without waiting on an unreachable hub: a local path, a hub model already
    in the local cache, or a hub that answers."""
    return Path(ref).expanduser().exists() or _cached_model(ref) or hub_unreachable_reason() is None


def require_hub(ref: str, what: str, fix: str, *, model: bool = False) -> None:
    """Raise one readable `MlanError` if `ref` needs the hub and the hub is out of reach.

    `ref` that exists as a local path needs no hub; a model already in the local cache
    neither. `what` names the thing ("model", "dataset of source 'squad'"), `fix` says how
    to point at local files instead.
    """
    if Path(ref).expanduser().exists() or (model and _cached_model(ref)):
        return
    reason = hub_unreachable_reason()
    if reason:
        raise MlanError(f"{what} {ref!r} is not a local path and the Hugging Face Hub is unreachable ({reason}); {fix}")


# `datasets` >= 4 refuses a hub repo that holds a `<name>.py` loading script with this message
# (RuntimeError from datasets.load.dataset_module_factory); matched on text because there is no
# dedicated exception type.
SCRIPT_REPO_MESSAGE = "Dataset scripts are no longer supported"

# Script-only hub repos mlan's shipped specs once named, and the parquet copy of the same data.
SCRIPT_REPO_ALTERNATIVES = {
    "allenai/cosmos_qa": "its parquet conversion (revision: refs/convert/parquet)",
    "HuggingFaceM4/VQAv2": "Multimodal-Fatima/VQAv2_train (parquet: the VQAv2 train questions with their COCO images)",
}


def script_repo_error(e: BaseException, ref: str, what: str) -> MlanError | None:
    """The one-line `MlanError` for a hub dataset that is only a loading script (None for any other error)."""
    if SCRIPT_REPO_MESSAGE not in str(e):
        return None
    known = SCRIPT_REPO_ALTERNATIVES.get(ref)
    use = (
        f"use {known} or a local copy"
        if known
        else "use its parquet conversion (revision: refs/convert/parquet) if the hub made one, or a local copy"
    )
    return MlanError(f"{what}: hub dataset {ref!r} is a loading-script repo, which datasets >= 4 cannot run; {use}")
