"""`mlan merge` as library calls: build the merge config from a YAML file and options, run it.

`merge_config` is what the CLI parses into (a YAML file, option values, `-o` overrides and the
latest run as the default multimodal model); `run_merge` does one merge or, for lists of alpha or
density, a sweep. Python callers use the same two functions the CLI does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlan.config.base import apply_overrides, read_yaml, validate_config
from mlan.config.merge import MergeConfig
from mlan.errors import MlanError
from mlan.merge.streaming import MergeResult, merge_models
from mlan.merge.sweep import SweepReport, sweep_merge
from mlan.runs import latest_run

log = logging.getLogger(__name__)

# Options that sit in the config's `sweep` section rather than at its top level.
SWEEP_OPTIONS = ("suites", "criterion", "keep_merged")


def merge_config(
    path: str | Path | None = None, options: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> MergeConfig:
    """The `MergeConfig` of a YAML file (optional) with `options` (MergeConfig fields, plus the sweep's
    `suites`, `criterion`, `keep_merged`; None values are ignored) and `FIELD.PATH=VALUE` overrides on
    top. Without a multimodal model the newest finished run under runs/ is used."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "merge options"
    given = {k: v for k, v in (options or {}).items() if v is not None}
    sweep = dict(data.get("sweep") or {}) | {k: given.pop(k) for k in SWEEP_OPTIONS if k in given}
    data |= given
    if sweep:
        data["sweep"] = sweep
    data = apply_overrides(data, overrides or (), source=source)
    if not data.get("multimodal"):
        latest = latest_run()
        if latest is None:
            raise MlanError(f"{source}: multimodal: required (pass --multimodal; no finished run under runs/)")
        data["multimodal"] = str(latest)
        log.info("multimodal model: the latest run, %s", latest)
    if not data.get("original"):
        raise MlanError(f"{source}: original: required (pass --original)")
    return validate_config(data, MergeConfig, source=source)


def run_merge(config: MergeConfig, overwrite: bool = False) -> MergeResult | SweepReport:
    """One merge (`merge_models`), or a sweep (`sweep_merge`) when alpha or density is a list."""
    from mlan.evaluate.parallel import launched_processes

    if not config.is_sweep and launched_processes() > 1:
        raise MlanError("mlan merge: one merge runs in one process (several processes share a sweep's evaluations)")
    return sweep_merge(config, overwrite=overwrite) if config.is_sweep else merge_models(config, overwrite=overwrite)
