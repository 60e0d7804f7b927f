"""The whole pipeline on bundled data with a tiny model, offline, on a CPU, in minutes.

Each stage goes through the same library function the CLI uses; the quickstart only
chooses small inputs and records what each stage produced.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlan.io import atomic_write_json, check_output_dir

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What one stage produced."""

    stage: str
    output: str
    summary: str
    seconds: float


@dataclass
class QuickstartResult:
    """All stages of one quickstart run, in order."""

    out: Path
    stages: list[StageResult] = field(default_factory=list)


def run_quickstart(out: str | Path, overwrite: bool = False, size: str = "tiny") -> QuickstartResult:
    """Run every stage on bundled data; returns what each stage produced (also `summary.json`)."""
    from mlan.config.shipped import validate_shipped
    from mlan.tiny import SIZES, save_tiny_llava

    out = Path(out)
    check_output_dir(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result = QuickstartResult(out=out)

    def stage(name: str, output: Path | str, summary: str, t0: float) -> None:
        result.stages.append(StageResult(name, str(output), summary, round(time.perf_counter() - t0, 1)))
        log.info("[%s] %s", name, summary)

    t0 = time.perf_counter()
    loaded = validate_shipped()
    stage("configs", "recipes/ data_mixtures/ evaluations/", f"{len(loaded)} shipped YAML files valid", t0)

    t0 = time.perf_counter()
    model_dir = save_tiny_llava(out / "base-model", size=size, seed=0)
    s = SIZES[size]
    stage(
        "tiny-model",
        model_dir,
        f"LLaVA {size}: Llama {s.layers}x{s.hidden} + CLIP {s.vision_layers}x{s.vision_hidden}",
        t0,
    )

    atomic_write_json(out / "summary.json", [vars(r) for r in result.stages])
    return result
