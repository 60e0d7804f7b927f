"""The lab's plots: language against vision with the merge sweep (lab.png) and accuracy against
training tokens (lab_tokens.png)."""

from __future__ import annotations

from pathlib import Path

from mlan.lab.plan import MERGE_BASE, PRETRAINED_LLM, STAGE1
from mlan.lab.reading import LabSummary, Row, Stat


def plot_lab(summary: LabSummary, path: Path) -> None:
    """Language against vision accuracy: each variant a point (range over seeds as error bars),
    the merge sweep a curve from the vision-only model (alpha 0) towards the pretrained LLM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))

    def point(row: Row) -> tuple[Stat, Stat] | None:
        return (row.language, row.vision) if row.language and row.vision else None

    # Colours by position in the table, so a variant keeps its colour whichever rows are present.
    for i, row in enumerate(summary.rows):
        p = point(row)
        if row.alpha is not None or row.name == PRETRAINED_LLM or p is None:
            continue
        lang, vis = p
        ax.errorbar(
            100 * vis.mean, 100 * lang.mean,
            xerr=[[100 * (vis.mean - vis.min)], [100 * (vis.max - vis.mean)]],
            yerr=[[100 * (lang.mean - lang.min)], [100 * (lang.max - lang.mean)]],
            fmt="o", ms=8, capsize=3, color=f"C{i % 10}", label=row.label,
        )  # fmt: skip
    # The sweep starts at the vision-only model itself (alpha 0), then each merge alpha in order.
    curve = [r for r in summary.rows if r.name == MERGE_BASE] + [r for r in summary.rows if r.alpha is not None]
    pts = [(p, r.alpha or 0.0) for r in curve if (p := point(r))]
    if len(pts) > 1:
        xs = [100 * vis.mean for (_, vis), _ in pts]
        ys = [100 * lang.mean for (lang, _), _ in pts]
        ax.plot(xs, ys, "-", color="0.3", lw=1.5, marker="s", ms=5, label="merge sweep (vision only + LLM)")
        for x, y, (_, a) in zip(xs, ys, pts, strict=True):
            ax.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    llm = next((r.language for r in summary.rows if r.name == PRETRAINED_LLM), None)
    if llm:
        ax.axhline(100 * llm.mean, color="0.6", ls=":", lw=1, label="pretrained LLM (language)")
    ax.set_xlabel("vision accuracy (%) — held-out scene questions")
    ax.set_ylabel("language accuracy (%) — held-out P1 tasks")
    n = len(summary.seeds)
    ax.set_title(
        f"mlan lab: language vs vision ({'mean over ' + str(n) + ' seeds, bars: range' if n > 1 else 'one seed'})"
    )
    ax.set_xlim(-2, 110)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tokens(summary: LabSummary, path: Path) -> None:
    """E5's picture: vision and language accuracy against the stage-2 training tokens (text + image) of
    each variant, the stage-1 model at zero; range over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for i, row in enumerate(summary.rows):
        if row.alpha is not None or row.name == PRETRAINED_LLM:
            continue
        x = 0.0 if row.name == STAGE1 else row.tokens
        if x is None:
            continue
        for ax, stat in zip(axes, (row.vision, row.language), strict=True):
            if stat is None:
                continue
            ax.errorbar(
                x / 1e3, 100 * stat.mean, yerr=[[100 * (stat.mean - stat.min)], [100 * (stat.max - stat.mean)]],
                fmt="o", ms=8, capsize=3, color=f"C{i % 10}", label=row.label,
            )  # fmt: skip
    for ax, what in zip(axes, ("vision (held-out scene questions)", "language (held-out P1 tasks)"), strict=True):
        ax.set_xlabel("stage-2 training tokens, text + image (thousands)")
        ax.set_ylabel(f"{what} accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    n = len(summary.seeds)
    fig.suptitle(
        f"mlan lab: accuracy against training tokens ({'mean over ' + str(n) + ' seeds' if n > 1 else 'one seed'})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
