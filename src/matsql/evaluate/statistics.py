"""Paired statistics for two arms evaluated on the same questions (DESIGN.md "Statistics (E5)").

Everything is a pure function of per-question correctness (bool, or a mean over seeds in [0, 1])
so a comparison is reproducible from the two outcome files and a seed.

- Paired bootstrap of the mean difference ``d_i = a_i - b_i`` (A is the first arm), percentile
  CI. Vectorized: index matrices of shape (chunk, n) drawn with ``rng.integers(0, n, (chunk, n))``,
  which consumes the generator exactly like ``n_resamples`` calls of ``rng.integers(0, n, n)``:
  the same seed gives the same resamples as the plain loop (``paired_bootstrap_loop``), which
  the tests check exactly.
- Cluster bootstrap by ``db_id``: resample databases with replacement, statistic = sum of d over
  the drawn clusters / number of questions in them (questions of one database are correlated).
  Clusters are numbered in order of first appearance, so one question per cluster reproduces
  the plain bootstrap draw for draw.
- Exact McNemar: two-sided binomial test on the discordant counts b (A right, B wrong) and c
  (A wrong, B right). With seed means it is the exact sign test on d_i > 0 vs d_i < 0, which
  reduces to McNemar for binary data.
- Minimum detectable effect (MDE) of that paired design, see ``mde_paired``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_RESAMPLES = 10_000
_CHUNK_ELEMENTS = 1 << 22  # bound one index chunk to ~32 MiB of int64


def show_ids(ids: Sequence[str], limit: int = 10) -> str:
    """A readable list of question ids for error messages (the first ``limit``, then a count)."""
    if not ids:
        return "none"
    head = ", ".join(ids[:limit])
    return f"{head} ... ({len(ids)} in all)" if len(ids) > limit else head


def bootstrap_indices(
    rng: np.random.Generator, n: int, n_resamples: int, chunk_elements: int = _CHUNK_ELEMENTS
) -> Iterator[np.ndarray]:
    """Resample index matrices, shape (rows, n), whose rows concatenate to ``n_resamples`` rows."""
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    rows = max(1, chunk_elements // n)
    done = 0
    while done < n_resamples:
        m = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(m, n))
        done += m


def paired_bootstrap(
    diffs: np.ndarray,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> np.ndarray:
    """Bootstrap distribution (length ``n_resamples``) of mean(diffs) over resampled questions."""
    d = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    parts = [d[idx].sum(axis=1) for idx in bootstrap_indices(rng, d.size, n_resamples, chunk_elements)]
    return np.concatenate(parts) / d.size


def paired_bootstrap_loop(
    diffs: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Slow reference: one resample per iteration. Same draws as ``paired_bootstrap``."""
    d = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples)
    for r in range(n_resamples):
        out[r] = d[rng.integers(0, d.size, size=d.size)].sum() / d.size
    return out


def cluster_codes(clusters: Sequence[str]) -> np.ndarray:
    """Integer code per item, clusters numbered by first appearance."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(c, len(first)) for c in clusters], dtype=np.intp)


def cluster_bootstrap(
    diffs: np.ndarray,
    clusters: Sequence[str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> np.ndarray:
    """Bootstrap distribution of the mean difference, resampling whole clusters (databases)."""
    d = np.asarray(diffs, dtype=np.float64)
    if len(clusters) != d.size:
        raise ValueError(f"{len(clusters)} cluster labels for {d.size} differences")
    codes = cluster_codes(clusters)
    g = int(codes.max()) + 1
    sums = np.bincount(codes, weights=d, minlength=g)
    counts = np.bincount(codes, minlength=g).astype(np.float64)
    rng = np.random.default_rng(seed)
    parts = [
        sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
        for idx in bootstrap_indices(rng, g, n_resamples, chunk_elements)
    ]
    return np.concatenate(parts)


def percentile_ci(dist: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution."""
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(dist, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class McNemar:
    b: int  # A right, B wrong (with seed means: d_i > 0)
    c: int  # A wrong, B right (with seed means: d_i < 0)
    p_value: float


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> McNemar:
    """Exact two-sided McNemar test; sign test on a_i - b_i when values are seed means."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    nb, nc = int((d > 0).sum()), int((d < 0).sum())
    p = 1.0 if nb + nc == 0 else float(stats.binomtest(nb, nb + nc, 0.5, alternative="two-sided").pvalue)
    return McNemar(b=nb, c=nc, p_value=p)


def mde_paired(n: int, psi: float, *, alpha: float = 0.05, power: float = 0.80) -> float | None:
    """Smallest true difference delta = p10 - p01 detectable with the given power (two-sided alpha).

    Normal approximation of McNemar's test (Connor, 1987): with n questions and discordance rate
    psi = p10 + p01, ``z_a sqrt(psi) + z_b sqrt(psi - delta^2) = delta sqrt(n)``, where
    z_a = Phi^-1(1 - alpha/2) and z_b = Phi^-1(power). Its positive root is::

        delta = sqrt(psi) * (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)

    (about (z_a + z_b) sqrt(psi / n) for large n). For seed means psi is the mean of d_i^2,
    which equals the discordance rate for binary data. None when psi is 0 (nothing to go on).
    """
    from scipy import stats

    if n < 1 or psi <= 0:
        return None
    za = float(stats.norm.ppf(1.0 - alpha / 2.0))
    zb = float(stats.norm.ppf(power))
    inner = n - za**2 + zb**2
    if inner < 0:
        return None
    return float(np.sqrt(psi) * (za * np.sqrt(n) + zb * np.sqrt(inner)) / (n + zb**2))


@dataclass(frozen=True)
class SeedSpread:
    ex: tuple[float, ...]  # EX per seed
    mean: float
    std: float | None  # sample std (ddof=1); None with one seed


def seed_spread(ex_per_seed: Sequence[float]) -> SeedSpread:
    """Seed-to-seed spread of EX, reported beside the bootstrap CI (sampling noise of the arm)."""
    x = np.asarray(ex_per_seed, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no seeds")
    return SeedSpread(
        ex=tuple(float(v) for v in x),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else None,
    )


class ComparisonResult(BaseModel):
    """A vs B on paired questions. Accuracies and differences are fractions; ``min_gap_pp`` is in pp."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name_a: str
    name_b: str
    n: int
    n_only_a: int = 0  # questions dropped by intersect
    n_only_b: int = 0
    ex_a: float
    ex_b: float
    diff: float  # ex_a - ex_b
    level: float
    ci_low: float
    ci_high: float
    n_clusters: int | None = None
    cluster_ci_low: float | None = None
    cluster_ci_high: float | None = None
    mcnemar_b: int
    mcnemar_c: int
    mcnemar_p: float
    mcnemar_kind: str
    mde: float | None
    n_resamples: int
    seed: int
    min_gap_pp: float | None = None
    claim: bool  # the CI lower bound clears min_gap (0 when no gap is given)
    verdict: str
    seeds_a: SeedSpread | None = None
    seeds_b: SeedSpread | None = None
    boot: np.ndarray | None = Field(default=None, exclude=True, repr=False)


# "Too few questions to tell" instead of "tie": a tie is only called by a design that could see a
# moderate effect. When the CI spans 0 and the minimum detectable effect is both above
# TIE_MAX_MDE_PP and at least TOO_FEW_RATIO times the observed gap, the data cannot tell a tie
# from a real difference of the MDE's size (e.g. 20 questions: MDE ~25 pp).
TIE_MAX_MDE_PP = 5.0
TOO_FEW_RATIO = 3.0


def _verdict(
    name_a: str,
    name_b: str,
    lo: float,
    hi: float,
    gap_pp: float | None,
    *,
    diff: float = 0.0,
    mde: float | None = None,
    n: int | None = None,
) -> tuple[bool, str]:
    """(claim, sentence): the claim holds only when the CI lower bound clears the margin. When
    nothing is clear and the MDE is far above the observed gap, the sentence says so (with the MDE)
    rather than calling a tie; the claim is the same either way."""
    margin = (gap_pp or 0.0) / 100.0
    ci = f"CI [{100 * lo:+.2f}, {100 * hi:+.2f}] pp"
    by = f" by more than {gap_pp:g} pp" if gap_pp else ""
    if lo > margin:
        return True, f"{name_a} beats {name_b}{by}: {ci}"
    if hi < -margin:
        return False, f"{name_b} beats {name_a}{by}: {ci}"
    if lo > 0:
        return False, f"{name_a} better than {name_b}, but not by more than {gap_pp:g} pp: {ci}"
    if hi < 0:
        return False, f"{name_b} better than {name_a}, but not by more than {gap_pp:g} pp: {ci}"
    questions = f"{n} questions" if n is not None else "these questions"
    if n is not None and mde is None:
        return False, (
            f"too few questions to tell: the arms differ on none of {questions}, so no effect size "
            f"is detectable (MDE undefined): {ci}"
        )
    if mde is not None and 100 * mde > TIE_MAX_MDE_PP and mde >= TOO_FEW_RATIO * abs(diff):
        return False, (
            f"too few questions to tell: with {questions} the minimum detectable effect is "
            f"{100 * mde:.1f} pp (80% power), far above the observed {100 * diff:+.2f} pp: {ci}"
        )
    return False, f"no clear difference (tie): {ci}"


def verdict_at(result: ComparisonResult, gap_pp: float | None) -> tuple[bool, str]:
    """(claim, sentence) of a finished comparison at a margin it may not have been run with: a
    plan's pre-registered ``primary.margin_pp``, read back from its ``compare.json``."""
    return _verdict(
        result.name_a,
        result.name_b,
        result.ci_low,
        result.ci_high,
        gap_pp,
        diff=result.diff,
        mde=result.mde,
        n=result.n,
    )


def compare_arms(
    a: Mapping[str, float],
    b: Mapping[str, float],
    db_of: Mapping[str, str] | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    min_gap_pp: float | None = None,
    intersect: bool = False,
    level: float = 0.95,
    name_a: str = "A",
    name_b: str = "B",
    seeds_a: Sequence[float] = (),
    seeds_b: Sequence[float] = (),
) -> ComparisonResult:
    """Compare A and B on the same questions (question id -> correctness in [0, 1]).

    Questions present in one arm only are an error listing them, unless ``intersect`` drops them
    (the counts are reported). Questions are put in sorted id order, so the result does not
    depend on file order. ``db_of`` enables the cluster bootstrap (every question needs a db_id).
    """
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if (only_a or only_b) and not intersect:
        raise ValueError(
            f"arms cover different questions: only in {name_a}: {show_ids(only_a)}; "
            f"only in {name_b}: {show_ids(only_b)} (use intersect to compare the shared ones)"
        )
    qids = sorted(set(a) & set(b))
    if not qids:
        raise ValueError("no shared questions to compare")
    xa = np.array([a[q] for q in qids], dtype=np.float64)
    xb = np.array([b[q] for q in qids], dtype=np.float64)
    d = xa - xb
    boot = paired_bootstrap(d, n_resamples=n_resamples, seed=seed)
    lo, hi = percentile_ci(boot, level)
    c_lo = c_hi = None
    n_clusters = None
    if db_of and all(db_of.get(q) for q in qids):
        labels = [db_of[q] for q in qids]
        n_clusters = len(set(labels))
        c_lo, c_hi = percentile_ci(cluster_bootstrap(d, labels, n_resamples=n_resamples, seed=seed), level)
    binary = bool(np.isin(xa, (0.0, 1.0)).all() and np.isin(xb, (0.0, 1.0)).all())
    mc = mcnemar_exact(xa, xb)
    mde = mde_paired(len(qids), float(np.mean(d**2)))
    claim, verdict = _verdict(name_a, name_b, lo, hi, min_gap_pp, diff=float(d.mean()), mde=mde, n=len(qids))
    return ComparisonResult(
        name_a=name_a,
        name_b=name_b,
        n=len(qids),
        n_only_a=len(only_a),
        n_only_b=len(only_b),
        ex_a=float(xa.mean()),
        ex_b=float(xb.mean()),
        diff=float(d.mean()),
        level=level,
        ci_low=lo,
        ci_high=hi,
        n_clusters=n_clusters,
        cluster_ci_low=c_lo,
        cluster_ci_high=c_hi,
        mcnemar_b=mc.b,
        mcnemar_c=mc.c,
        mcnemar_p=mc.p_value,
        mcnemar_kind="exact McNemar" if binary else "exact sign test on seed-mean differences",
        mde=mde,
        n_resamples=n_resamples,
        seed=seed,
        min_gap_pp=min_gap_pp,
        claim=claim,
        verdict=verdict,
        seeds_a=seed_spread(seeds_a) if len(seeds_a) > 1 else None,
        seeds_b=seed_spread(seeds_b) if len(seeds_b) > 1 else None,
        boot=boot,
    )
