"""`mlan lab`: the papers' effects reproduced in miniature on a CPU: vision tuning forgets language; a
little vision data in language instructions does not; merging the LLM back recovers it; language-only
tuning lifts vision; a language-heavy mixture needs fewer tokens; Wings' learners."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overwrite, console, parse_list


def lab(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="One seed and the essential variants (vision-only, language-only, 12.5%): E1-E5."),
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
            "--jobs",
            min=1,
            help="Processes at a time: seeds in parallel, and those left over run a seed's stage-2 variants in "
            "parallel (default: every seed, or --quick's three variants, at once, up to 2 per core).",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Reproduce the papers' effects (E1-E6) in miniature, through mlan's own stages: a seeded toy world,
    a tiny LLaVA, LLM pretraining, stage-1 alignment, stage-2 variants, evaluation and a merge sweep.

    Prints the table of language and vision scores and training tokens per variant and merge alpha, and
    the reading of which effects held; writes lab.json, lab.md, lab.png and lab_tokens.png to --out.

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
    c.print(f"\nwritten: {', '.join(report.files.values())}")
