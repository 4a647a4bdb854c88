"""Figures for papers: per-team EX with 95% intervals (``report``) and the paired difference with
its CI (``compare``), sized for one column (3.3 in) and written as PNG, PDF and SVG side by side
(matplotlib, Agg backend: no display needed). Tables are Markdown/CSV/LaTeX, never pictures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matsql.evaluate.statistics import ComparisonResult

COLUMN_WIDTH_IN = 3.3  # one column of a two-column paper
FORMATS = ("png", "pdf", "svg")
PNG_DPI = 300
# Colour-blind-safe (Okabe-Ito) and told apart by marker shape too, for greyscale prints.
METRIC_STYLE = {
    "selector EX": ("#0072B2", "o"),
    "majority": ("#E69F00", "s"),
    "pass@K": ("#009E73", "^"),
}


def _plt():
    """pyplot on the Agg backend with paper-sized text, imported on first use (keeps the CLI's
    start-up light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 7,
            "axes.titlesize": 7,
            "axes.labelsize": 7,
            "xtick.labelsize": 6.5,
            "ytick.labelsize": 7,
            "legend.fontsize": 6.5,
            "axes.linewidth": 0.6,
            "xtick.major.width": 0.6,
            "ytick.major.width": 0.6,
            "pdf.fonttype": 42,  # TrueType in the PDF: editable text, accepted by publishers
            "svg.fonttype": "none",  # text stays text in the SVG
            "svg.hashsalt": "matsql",  # same figure, same bytes
        }
    )
    return plt


@dataclass(frozen=True)
class Estimate:
    """One metric of one team: the point value and its interval, as fractions."""

    config: str
    metric: str  # "selector EX", "majority" or a pass@K label such as "pass@8"
    value: float
    low: float
    high: float
    n: int


def _style(metric: str) -> tuple[str, str]:
    return METRIC_STYLE.get("pass@K" if metric.startswith("pass@") else metric, ("#555555", "D"))


def teams_figure(estimates: Sequence[Estimate], stem: Path, *, level: float = 0.95) -> list[Path]:
    """Dot-and-whisker chart: one row per team (in the given order, top to bottom), one marker per
    metric with its interval. Writes ``stem``.png/.pdf/.svg and returns the paths."""
    if not estimates:
        raise ValueError("no estimates to plot")
    plt = _plt()
    configs = list(dict.fromkeys(e.config for e in estimates))
    metrics = list(dict.fromkeys(e.metric for e in estimates))
    height = 0.6 + len(configs) * (0.12 + 0.1 * len(metrics))
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, height))
    spread = 0.22 if len(metrics) > 1 else 0.0
    offsets = np.linspace(spread, -spread, len(metrics)) if len(metrics) > 1 else np.zeros(1)
    for off, metric in zip(offsets, metrics, strict=True):
        color, marker = _style(metric)
        pts = [e for e in estimates if e.metric == metric]
        y = np.array([len(configs) - 1 - configs.index(e.config) + off for e in pts])
        x = np.array([100 * e.value for e in pts])
        err = np.array([[100 * (e.value - e.low) for e in pts], [100 * (e.high - e.value) for e in pts]])
        ax.errorbar(
            x, y, xerr=err, fmt=marker, color=color, ms=3.2, lw=0.9, capsize=1.6, capthick=0.8, label=metric
        )
    ax.set_yticks(range(len(configs)))
    ax.set_yticklabels(list(reversed(configs)))
    ax.set_ylim(-0.6, len(configs) - 0.4)
    ns = sorted({e.n for e in estimates})
    n_txt = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
    ax.set_xlabel(f"EX (%) with {100 * level:.0f}% bootstrap CI ({n_txt} questions)")
    lo = min(100 * e.low for e in estimates)
    hi = max(100 * e.high for e in estimates)
    pad = max(2.0, 0.08 * (hi - lo))
    ax.set_xlim(max(0.0, lo - pad), min(100.0, hi + pad))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # whole numbers, no crowding
    ax.grid(axis="x", lw=0.4, color="#dddddd")
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    if len(metrics) > 1:
        ax.legend(
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            ncol=len(metrics),
            frameon=False,
            handletextpad=0.3,
            columnspacing=1.0,
        )
    fig.tight_layout(pad=0.3)
    return _save(fig, stem)


def difference_figure(result: ComparisonResult, stem: Path) -> list[Path]:
    """The paired difference A - B (pp) with its CIs (plain and, when there, clustered by
    database), 0, the min gap and +/- the minimum detectable effect. ``stem``.png/.pdf/.svg."""
    plt = _plt()
    r = result
    rows = [("paired", r.ci_low, r.ci_high)]
    if r.cluster_ci_low is not None and r.cluster_ci_high is not None:
        rows.append((f"by db ({r.n_clusters} dbs)", r.cluster_ci_low, r.cluster_ci_high))
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 0.75 + 0.3 * len(rows)))
    d = 100 * r.diff
    for i, (_, lo, hi) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.errorbar(
            [d],
            [y],
            xerr=[[d - 100 * lo], [100 * hi - d]],
            fmt="o",
            color="#0072B2",
            ms=3.5,
            lw=1.1,
            capsize=2.0,
            capthick=0.9,
        )
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label for label, _, _ in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axvline(0.0, color="black", lw=0.7)
    if r.mde is not None:
        ax.axvspan(
            -100 * r.mde,
            100 * r.mde,
            color="#999999",
            alpha=0.15,
            lw=0,
            label=f"$\\pm$MDE {100 * r.mde:.1f} pp",
        )
    if r.min_gap_pp is not None:
        ax.axvline(r.min_gap_pp, color="#D55E00", ls="--", lw=0.9, label=f"min gap {r.min_gap_pp:g} pp")
    edges = [100 * x for _, lo, hi in rows for x in (lo, hi)] + [0.0, d]
    if r.mde is not None:
        edges += [-100 * r.mde, 100 * r.mde]
    if r.min_gap_pp is not None:
        edges.append(r.min_gap_pp)
    span = max(edges) - min(edges)
    pad = max(0.5, 0.08 * span)
    ax.set_xlim(min(edges) - pad, max(edges) + pad)
    ax.set_xlabel(f"EX({r.name_a}) $-$ EX({r.name_b}) (pp), {100 * r.level:.0f}% CI, n={r.n}")
    ax.grid(axis="x", lw=0.4, color="#dddddd")
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, handletextpad=0.4)
    fig.tight_layout(pad=0.3)
    return _save(fig, stem)


def bootstrap_figure(result: ComparisonResult, stem: Path, boot: np.ndarray | None = None) -> list[Path]:
    """Histogram of the bootstrap difference (pp) with the CI, zero and the min-gap margin."""
    plt = _plt()
    dist = boot if boot is not None else result.boot
    if dist is None:
        raise ValueError("no bootstrap distribution to plot")
    pp = 100.0 * np.asarray(dist)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.0))
    ax.hist(pp, bins=_lattice_bins(pp), color="#9ecae1", edgecolor="white", linewidth=0.3)
    ax.axvline(0.0, color="black", lw=0.7)
    ax.axvline(100 * result.diff, color="#0072B2", lw=1.0, label=f"observed {100 * result.diff:+.2f}")
    ax.axvspan(
        100 * result.ci_low,
        100 * result.ci_high,
        color="#0072B2",
        alpha=0.12,
        lw=0,
        label=f"{100 * result.level:.0f}% CI [{100 * result.ci_low:+.2f}, {100 * result.ci_high:+.2f}]",
    )
    if result.min_gap_pp is not None:
        ax.axvline(
            result.min_gap_pp, color="#D55E00", ls="--", lw=0.9, label=f"min gap {result.min_gap_pp:g}"
        )
    ax.set_xlabel(f"EX({result.name_a}) $-$ EX({result.name_b}) (pp), n={result.n}")
    ax.set_ylabel(f"of {result.n_resamples} resamples")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, handlelength=1.2)
    fig.tight_layout(pad=0.3)
    return _save(fig, stem)


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


_SAVE_KWARGS = {  # no creation dates: the same figure gives the same bytes
    "png": {"dpi": PNG_DPI},
    "pdf": {"metadata": {"CreationDate": None}},
    "svg": {"metadata": {"Date": None}},
}


def _save(fig: matplotlib.figure.Figure, stem: Path) -> list[Path]:  # noqa: F821
    """``stem`` with each suffix of FORMATS (a suffix already on ``stem`` is replaced)."""
    plt = _plt()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        kwargs = _SAVE_KWARGS[fmt]
        fig.savefig(path, bbox_inches="tight", pad_inches=0.02, **kwargs)
        paths.append(path)
    plt.close(fig)
    return paths
