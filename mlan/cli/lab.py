"""`mlan lab`: the three effects (vision tuning forgets language; a little vision data in language
instructions does not; merging the LLM back recovers it) reproduced in miniature on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overwrite, console, parse_list


def lab(
    quick: Annotated[
        bool, typer.Option("--quick", help="One seed and the essential variants (vision-only, language-only, 12.5%).")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (one sub-folder per seed + lab.json/md/png).")
    ] = Path("runs/lab"),
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds (default: 0 with --quick, else 0,1,2).")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs", min=1, help="Seeds run in parallel processes (default: every seed at once, up to 2 per CPU core)."
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Reproduce the three effects in miniature, through mlan's own stages: a seeded toy world, a tiny
    LLaVA, LLM pretraining, stage-1 alignment, stage-2 variants, evaluation and a merge sweep.

    Prints the table of language and vision scores per variant and merge alpha, and the reading of which effects held; writes lab.json, lab.md and lab.png to --out.

    Example: mlan lab --quick --out runs/lab-quick
    """
    from mlan.lab.run import full_plan, quick_plan, quiet_libraries, run_lab

    chosen = parse_list("--seeds", seeds, int, "0,1,2") if seeds is not None else None
    plan = quick_plan(chosen) if quick else full_plan(chosen)
    if jobs is not None:
        plan.jobs = jobs
    quiet_libraries()
    import logging

    # One line per stage from the lab; the stages' own INFO lines only with --verbose.
    lab_log = logging.getLogger("mlan.lab")
    if logging.getLogger("mlan").level == logging.INFO:
        lab_log.setLevel(logging.INFO)
        logging.getLogger("mlan").setLevel(logging.WARNING)
    report = run_lab(out, plan, overwrite=overwrite)
    c = console()
    c.print(f"\nmlan lab ({'quick' if quick else 'full'}): {report.out}\n")
    c.print(report.table, markup=False, soft_wrap=True)
    c.print()
    c.print(report.reading, markup=False, soft_wrap=True)
    c.print(f"\nwritten: {report.files['json']}, {report.files['md']}, {report.files['png']}")
