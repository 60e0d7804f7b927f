"""`mlan build-mixture`: a seeded, audited instruction mixture from a spec."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlan.cli.common import Overrides, Overwrite, console, load
from mlan.console import quiet_logger


def build_mixture(
    spec: Annotated[
        str, typer.Argument(help="Mixture spec: a YAML file or a shipped name (mlan, mlan_v_vicuna, quickstart, ...).")
    ] = "data_mixtures/mlan_released.yaml",
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: runs/mixtures/<name>).")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Read hub sources from local copies: DIR/<source name>/<split>.jsonl (or .parquet, or a "
            "save_to_disk folder), e.g. for a machine without hub access.",
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            min=1,
            help="Training rows (same as -o size=N): every source's count, and a validation count, is scaled to "
            "it by the spec's shares; the manifest records the scaling.",
        ),
    ] = None,
    overrides: Overrides = None,
    overwrite: Overwrite = False,
) -> None:
    """Build an instruction mixture (train + validation Arrow dataset and manifest.json) from
    real datasets: sample each source with the spec's seed, render instructions from templates,
    remove duplicates, check contamination against evaluation data.

    With no SPEC it builds MLAN's data as the paper trained on it: the authors' released 80k language-only rows
    (data_mixtures/mlan_released.yaml, from the hub), into runs/mixtures/mlan_released, where the shipped recipes
    look for it. data_mixtures/mlan.yaml rebuilds the same kind of mixture from the source datasets: with direct
    answers, or with your teacher's rationales (`mlan rationales`, then -o targets=rationale).

    Example: mlan build-mixture data_mixtures/quickstart.yaml --out runs/mixtures/quickstart
    (add --size 1600 to shrink a preset, keeping its shares)
    """
    import datasets
    from rich.table import Table

    from mlan.config.mixture import MixtureSpec
    from mlan.data.mixture import build_mixture as build
    from mlan.runs import mixture_dir

    if size is not None:
        overrides = [*(overrides or []), f"size={size}"]
    cfg = load(spec, "data_mixtures", MixtureSpec, overrides)
    if data_dir is not None:
        from mlan.data.sources import with_local_data

        cfg = with_local_data(cfg, data_dir)
    # datasets' per-file bars would only add noise. The library logs a line per source ("squad: N rows
    # (...) in X s"); the table below says each source's rows, so those lines are held back (-v shows them).
    datasets.disable_progress_bars()
    with quiet_logger("mlan.data.fill"):
        result = build(cfg, out or mixture_dir(cfg.name), overwrite=overwrite)
    m = result.manifest
    table = Table(title=f"mixture {m['name']} (seed {m['seed']})")
    for col in ("source", "modality", "train", "validation", "bad", "dups", "text tokens", "image tokens"):
        table.add_column(col, justify="left" if col in ("source", "modality") else "right")
    for name, s in m["sources"].items():
        table.add_row(
            name,
            s["modality"],
            str(s["train"]),
            str(s["validation"]),
            str(s["bad_rows"]),
            str(s["exact_duplicates"] + s["near_duplicates"]),
            f"{s['text_tokens']:,}",
            f"{s['image_tokens']:,}",
        )
    c = console()
    c.print(table)
    if m.get("scaled"):
        sc = m["scaled"]
        c.print(f"scaled: {sc['from']:,} -> {sc['to']:,} training rows, by the spec's shares")
    r = m["ratios"]
    share = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    c.print(
        f"language share: {share(r['examples_language_share'])} of examples, {share(r['tokens_language_share'])} of tokens"
    )
    cont = m["contamination"]
    if cont["checked"]:
        hits = {t: v["exact"] + v["ngram"] for t, v in cont["tasks"].items() if v["exact"] + v["ngram"]}
        skipped = f" (not checked: {', '.join(cont['not_checked'])})" if cont.get("not_checked") else ""
        c.print("contamination: " + (", ".join(f"{t} {n} rows" for t, n in hits.items()) or "none found") + skipped)
    elif cont.get("not_checked"):
        c.print(f"contamination: not checked ({', '.join(cont['not_checked'])} could not be read)")
    if m["covers_eval_tasks"]:
        c.print(f"covers evaluation tasks: {', '.join(m['covers_eval_tasks'])}")
    c.print(_targets_line(m["targets"]))
    c.print(
        f"built in {m['build_seconds']:.1f} s, content hash {result.content_hash[:16]}  ->  [bold]{result.out}[/bold]"
    )


def _targets_line(targets: dict) -> str:
    """Which of the three forms of MLAN's data was built (manifest `targets`)."""
    if targets["form"] == "rationale":
        return (
            f"targets: teacher rationales joined as MLAN does ({targets['teacher']}; "
            f"{targets['records']['kept']} kept of {sum(targets['records'].values())} in {targets['store']})"
        )
    if targets["form"] == "given":
        return "targets: as the rows give them (LLaVA or chat rows, e.g. MLAN's released rationales)"
    return "targets: direct answers (MLAN trained on teacher rationales: mlan rationales, then -o targets=rationale)"
