"""PNG figures for comparisons and reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from matsql.evaluate.statistics import ComparisonResult


def _plt():
    """pyplot on the Agg backend, imported on first use (keeps the CLI's start-up light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bootstrap_png(result: ComparisonResult, path: Path, boot: np.ndarray | None = None) -> Path:
    """Histogram of the bootstrap difference (pp) with the CI, zero and the min-gap margin."""
    plt = _plt()
    dist = boot if boot is not None else result.boot
    if dist is None:
        raise ValueError("no bootstrap distribution to plot")
    pp = 100.0 * np.asarray(dist)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.hist(pp, bins=_lattice_bins(pp), color="#8fb3d9", edgecolor="white")
    ax.axvline(0.0, color="black", lw=1.2, label="0")
    ax.axvline(100 * result.diff, color="#1f4e79", lw=1.5, label=f"observed {100 * result.diff:+.2f} pp")
    ax.axvspan(
        100 * result.ci_low,
        100 * result.ci_high,
        color="#1f4e79",
        alpha=0.12,
        label=f"{100 * result.level:.0f}% CI [{100 * result.ci_low:+.2f}, {100 * result.ci_high:+.2f}]",
    )
    if result.min_gap_pp is not None:
        ax.axvline(
            result.min_gap_pp, color="#c0392b", ls="--", lw=1.5, label=f"min gap {result.min_gap_pp:g} pp"
        )
    ax.set_xlabel(f"EX({result.name_a}) - EX({result.name_b})  [pp]")
    ax.set_ylabel("bootstrap resamples")
    ax.set_title(
        f"Paired bootstrap, n={result.n} questions, {result.n_resamples} resamples, seed {result.seed}"
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _lattice_bins(values: np.ndarray, target: int = 60) -> np.ndarray:
    """Bin edges on the lattice of a discrete bootstrap distribution.

    Mean differences of binary outcomes take values k/n; fixed-width bins alias against that
    grid and draw a comb. Bins that hold a whole number of grid steps avoid it.
    """
    uniq = np.unique(values)
    if uniq.size < 2:
        return np.array([uniq[0] - 0.5, uniq[0] + 0.5]) if uniq.size else np.array([0.0, 1.0])
    step = float(np.min(np.diff(uniq)))
    span = float(uniq[-1] - uniq[0])
    width = step * max(1, int(np.ceil(span / (target * step))))
    start = uniq[0] - width / 2
    n_bins = int(np.ceil((uniq[-1] - start) / width)) + 1
    return start + width * np.arange(n_bins + 1)


def table_png(headers: Sequence[str], rows: Sequence[Sequence[str]], path: Path, title: str = "") -> Path:
    """A results table as an image (for slides and READMEs that cannot render Markdown)."""
    plt = _plt()
    height = 0.6 + 0.35 * (len(rows) + 1)
    width = max(6.0, 1.35 * len(headers))
    fig, ax = plt.subplots(figsize=(width, height), dpi=150)
    ax.axis("off")
    table = ax.table(
        cellText=[list(r) for r in rows], colLabels=list(headers), loc="center", cellLoc="center"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.3)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8eef5")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: matplotlib.figure.Figure, path: Path) -> Path:  # noqa: F821
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
