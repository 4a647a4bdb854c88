"""Paired statistics: bootstrap (plain and clustered), exact McNemar, MDE, compare_arms."""

from __future__ import annotations

import statistics as pystats

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from matsql.evaluate.statistics import (
    bootstrap_indices,
    cluster_bootstrap,
    compare_arms,
    mcnemar_exact,
    mde_paired,
    paired_bootstrap,
    paired_bootstrap_loop,
    percentile_ci,
    seed_spread,
)


def _binary_arms(n: int, seed: int, p_a: float = 0.6, p_b: float = 0.55) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < p_a).astype(float), (rng.random(n) < p_b).astype(float)


def _cluster_bootstrap_loop(d: np.ndarray, labels: list[str], n_resamples: int, seed: int) -> np.ndarray:
    """Slow reference: per resample, draw clusters one call at a time and pool their questions."""
    order: list[str] = []
    for lab in labels:
        if lab not in order:
            order.append(lab)
    members = {lab: [i for i, x in enumerate(labels) if x == lab] for lab in order}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(order), size=len(order))
        pooled = [d[i] for g in drawn for i in members[order[g]]]
        out.append(sum(pooled) / len(pooled))
    return np.array(out)


# --- McNemar -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "seed", "p_b"), [(40, 0, 0.55), (200, 1, 0.3), (15, 2, 0.6), (500, 3, 0.62), (7, 4, 0.6)]
)
def test_mcnemar_matches_statsmodels(n: int, seed: int, p_b: float) -> None:
    a, b = _binary_arms(n, seed, p_b=p_b)
    got = mcnemar_exact(a, b)
    table = [
        [int(((a == 1) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())],
        [int(((a == 0) & (b == 1)).sum()), int(((a == 0) & (b == 0)).sum())],
    ]
    ref = sm_mcnemar(table, exact=True)
    assert (got.b, got.c) == (table[0][1], table[1][0])
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-10)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (5, 5), (0, 9), (12, 3), (30, 31)])
def test_mcnemar_counts_edge_cases(b: int, c: int) -> None:
    a = np.array([1.0] * b + [0.0] * c + [1.0, 0.0])
    bb = np.array([0.0] * b + [1.0] * c + [1.0, 0.0])
    got = mcnemar_exact(a, bb)
    assert (got.b, got.c) == (b, c)
    ref = sm_mcnemar([[1, b], [c, 1]], exact=True).pvalue
    assert got.p_value == pytest.approx(ref, rel=1e-10)


def test_sign_test_on_seed_means() -> None:
    a = np.array([1.0, 2 / 3, 1 / 3, 0.0, 1.0])
    b = np.array([2 / 3, 2 / 3, 1.0, 0.0, 0.0])
    got = mcnemar_exact(a, b)
    assert (got.b, got.c) == (2, 1)
    assert got.p_value == pytest.approx(stats.binomtest(2, 3, 0.5).pvalue)


# --- bootstrap ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 31, 200])
def test_vectorized_bootstrap_equals_loop_exactly(n: int) -> None:
    a, b = _binary_arms(n, seed=n)
    d = a - b
    # A small chunk forces several index matrices, so chunk boundaries are exercised too.
    fast = paired_bootstrap(d, n_resamples=503, seed=11, chunk_elements=7 * n + 3)
    slow = paired_bootstrap_loop(d, n_resamples=503, seed=11)
    np.testing.assert_array_equal(fast, slow)


def test_vectorized_bootstrap_equals_loop_on_seed_means() -> None:
    rng = np.random.default_rng(5)
    d = rng.integers(0, 4, 61) / 3 - rng.integers(0, 4, 61) / 3
    fast = paired_bootstrap(d, n_resamples=300, seed=2, chunk_elements=1000)
    slow = paired_bootstrap_loop(d, n_resamples=300, seed=2)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-15)


def test_bootstrap_indices_cover_requested_rows() -> None:
    rng = np.random.default_rng(0)
    chunks = list(bootstrap_indices(rng, 10, 95, chunk_elements=200))
    assert [c.shape for c in chunks] == [(20, 10)] * 4 + [(15, 10)]
    allidx = np.concatenate(chunks)
    assert allidx.min() >= 0 and allidx.max() <= 9


def test_bootstrap_is_reproducible_and_seed_dependent() -> None:
    a, b = _binary_arms(300, 9)
    d = a - b
    r1 = paired_bootstrap(d, n_resamples=2000, seed=42)
    r2 = paired_bootstrap(d, n_resamples=2000, seed=42)
    r3 = paired_bootstrap(d, n_resamples=2000, seed=43)
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3)
    assert r1.shape == (2000,)


def test_bootstrap_distribution_centres_on_observed_mean() -> None:
    a, b = _binary_arms(400, 3)
    d = a - b
    dist = paired_bootstrap(d, n_resamples=20_000, seed=0)
    se = d.std(ddof=0) / np.sqrt(d.size)
    assert dist.mean() == pytest.approx(d.mean(), abs=4 * se / np.sqrt(dist.size) + 1e-12)
    assert dist.std() == pytest.approx(se, rel=0.03)


def test_cluster_bootstrap_with_singleton_clusters_is_the_plain_bootstrap() -> None:
    a, b = _binary_arms(97, 8)
    d = a - b
    labels = [f"db{i}" for i in range(d.size)]
    np.testing.assert_array_equal(
        cluster_bootstrap(d, labels, n_resamples=1000, seed=4),
        paired_bootstrap(d, n_resamples=1000, seed=4),
    )


def test_cluster_bootstrap_matches_loop_reference() -> None:
    rng = np.random.default_rng(1)
    a, b = _binary_arms(60, 1)
    d = a - b
    labels = [f"db{int(x)}" for x in rng.integers(0, 9, d.size)]
    fast = cluster_bootstrap(d, labels, n_resamples=400, seed=7, chunk_elements=50)
    slow = _cluster_bootstrap_loop(d, labels, 400, 7)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_cluster_bootstrap_is_wider_when_clusters_share_outcomes() -> None:
    # 20 databases, each answered all-right or all-wrong by A alone: strongly clustered.
    rng = np.random.default_rng(0)
    per_db = rng.integers(0, 2, 20).astype(float)
    d = np.repeat(per_db, 15)
    labels = [f"db{i}" for i in range(20) for _ in range(15)]
    plain = percentile_ci(paired_bootstrap(d, n_resamples=4000, seed=0))
    clus = percentile_ci(cluster_bootstrap(d, labels, n_resamples=4000, seed=0))
    assert (clus[1] - clus[0]) > 2.5 * (plain[1] - plain[0])


def test_percentile_ci() -> None:
    dist = np.arange(1001) / 1000
    lo, hi = percentile_ci(dist, 0.95)
    assert (lo, hi) == pytest.approx((0.025, 0.975))


# --- minimum detectable effect -----------------------------------------------------------


@pytest.mark.parametrize(("n", "psi"), [(1534, 0.2), (400, 0.25), (100, 0.4)])
def test_mde_solves_connor_sample_size_equation(n: int, psi: float) -> None:
    delta = mde_paired(n, psi)
    assert delta is not None
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    n_needed = (za * np.sqrt(psi) + zb * np.sqrt(psi - delta**2)) ** 2 / delta**2
    assert n_needed == pytest.approx(n, rel=1e-9)
    # (z_a + z_b) sqrt(psi / n) ignores that the variance under H1 is psi - delta^2 < psi,
    # so it is a little larger than the exact root, and close to it.
    approx = (za + zb) * np.sqrt(psi / n)
    assert 0.95 * approx <= delta < approx


@pytest.mark.parametrize(("n", "psi"), [(400, 0.25), (1534, 0.15)])
def test_mde_has_80_percent_power_in_simulation(n: int, psi: float) -> None:
    delta = mde_paired(n, psi)
    assert delta is not None
    rng = np.random.default_rng(123)
    p10, p01 = (psi + delta) / 2, (psi - delta) / 2
    draws = rng.multinomial(n, [p10, p01, 1 - psi], size=40_000)
    b, c = draws[:, 0], draws[:, 1]
    z = (b - c) / np.sqrt(np.maximum(b + c, 1))
    power = float(np.mean(np.abs(z) > stats.norm.ppf(0.975)))
    assert power == pytest.approx(0.80, abs=0.015)
    # Half the effect has clearly less power: the MDE is not a loose bound.
    p10h, p01h = (psi + delta / 2) / 2, (psi - delta / 2) / 2
    draws = rng.multinomial(n, [p10h, p01h, 1 - psi], size=40_000)
    zh = (draws[:, 0] - draws[:, 1]) / np.sqrt(np.maximum(draws[:, 0] + draws[:, 1], 1))
    assert float(np.mean(np.abs(zh) > stats.norm.ppf(0.975))) < 0.4


def test_mde_undefined_without_discordance() -> None:
    assert mde_paired(100, 0.0) is None
    assert mde_paired(0, 0.3) is None


# --- compare_arms ------------------------------------------------------------------------


def _as_dict(x: np.ndarray, prefix: str = "q") -> dict[str, float]:
    return {f"{prefix}{i:04d}": float(v) for i, v in enumerate(x)}


def test_compare_arms_numbers_and_direction() -> None:
    a, b = _binary_arms(500, 21, p_a=0.65, p_b=0.5)
    A, B = _as_dict(a), _as_dict(b)
    db = {q: f"db{i % 11}" for i, q in enumerate(A)}
    res = compare_arms(A, B, db, n_resamples=2000, seed=3, name_a="collab", name_b="indep")
    assert res.n == 500
    assert res.ex_a == pytest.approx(a.mean()) and res.ex_b == pytest.approx(b.mean())
    assert res.diff == pytest.approx(a.mean() - b.mean())
    assert res.ci_low < res.diff < res.ci_high
    d = a - b  # questions are in sorted id order, which is the array order here
    lo, hi = percentile_ci(paired_bootstrap(d, n_resamples=2000, seed=3))
    assert (res.ci_low, res.ci_high) == (lo, hi)
    clo, chi = percentile_ci(cluster_bootstrap(d, [db[q] for q in sorted(A)], n_resamples=2000, seed=3))
    assert (res.cluster_ci_low, res.cluster_ci_high) == (clo, chi)
    assert res.n_clusters == 11
    mc = mcnemar_exact(a, b)
    assert (res.mcnemar_b, res.mcnemar_c, res.mcnemar_p) == (mc.b, mc.c, mc.p_value)
    assert res.mcnemar_kind == "exact McNemar"
    assert res.mde == pytest.approx(mde_paired(500, (mc.b + mc.c) / 500))
    assert res.claim is (res.ci_low > 0)
    # Swapping the arms mirrors the difference and the CI.
    rev = compare_arms(B, A, db, n_resamples=2000, seed=3)
    assert rev.diff == pytest.approx(-res.diff)
    assert (rev.mcnemar_b, rev.mcnemar_c) == (res.mcnemar_c, res.mcnemar_b)
    assert "boot" not in res.model_dump()


def test_compare_arms_does_not_depend_on_dict_order() -> None:
    a, b = _binary_arms(120, 5)
    A, B = _as_dict(a), _as_dict(b)
    A_rev = dict(reversed(list(A.items())))
    r1 = compare_arms(A, B, n_resamples=500, seed=1)
    r2 = compare_arms(A_rev, B, n_resamples=500, seed=1)
    assert (r1.ci_low, r1.ci_high) == (r2.ci_low, r2.ci_high)
    assert r1.cluster_ci_low is None and r1.n_clusters is None


def test_compare_arms_requires_matching_questions() -> None:
    A = {"q1": 1.0, "q2": 0.0, "q3": 1.0}
    B = {"q2": 1.0, "q3": 1.0, "q4": 0.0}
    with pytest.raises(ValueError, match=r"only in A: q1; only in B: q4"):
        compare_arms(A, B, n_resamples=10)
    res = compare_arms(A, B, n_resamples=10, intersect=True)
    assert (res.n, res.n_only_a, res.n_only_b) == (2, 1, 1)


@pytest.mark.parametrize(
    ("p_a", "p_b", "gap", "claim", "phrase"),
    [
        (0.8, 0.4, None, True, "A beats B"),
        (0.8, 0.4, 5.0, True, "by more than 5 pp"),
        (0.8, 0.4, 90.0, False, "but not by more than 90 pp"),
        (0.4, 0.8, None, False, "B beats A"),
        (0.6, 0.6, None, False, "too few questions to tell"),  # 80% discordant: MDE ~12 pp
    ],
)
def test_verdict_and_claim(p_a: float, p_b: float, gap: float | None, claim: bool, phrase: str) -> None:
    n = 400
    a = (np.arange(n) < p_a * n).astype(float)
    b = (np.arange(n) < p_b * n).astype(float)
    if p_a == p_b:  # same accuracy, many discordant pairs
        b = b[::-1].copy()
    res = compare_arms(_as_dict(a), _as_dict(b), n_resamples=1000, seed=0, min_gap_pp=gap)
    assert res.claim is claim
    assert phrase in res.verdict
    assert res.claim is (res.ci_low * 100 > (gap or 0.0))


def test_tie_needs_a_design_that_could_see_an_effect() -> None:
    """Same accuracy: a tie when the MDE is small (many questions, few discordant ones), but
    "too few questions to tell", with the MDE, when it is far above the observed gap."""
    n = 2000
    a = (np.arange(n) < 0.6 * n).astype(float)
    b = a.copy()
    b[:40], b[-40:] = 0.0, 1.0  # 80 discordant questions (4%), 40 each way
    res = compare_arms(_as_dict(a), _as_dict(b), n_resamples=1000, seed=0)
    assert res.diff == 0.0 and res.mde is not None and 100 * res.mde < 5.0
    assert res.verdict.startswith("no clear difference (tie)")
    sa, sb = np.zeros(20), np.zeros(20)
    sa[:4], sb[4:7] = 1.0, 1.0  # 20 questions: A right alone on 4, B on 3
    small = compare_arms(_as_dict(sa), _as_dict(sb), n_resamples=1000, seed=0)
    assert small.ci_low < 0 < small.ci_high and small.mde is not None
    assert small.verdict.startswith("too few questions to tell")
    assert f"{100 * small.mde:.1f} pp" in small.verdict
    same = compare_arms({"q1": 0.0, "q2": 0.0}, {"q1": 0.0, "q2": 0.0}, n_resamples=100)
    assert same.mde is None and same.verdict.startswith("too few questions to tell")
    assert same.claim is False


def test_large_gap_with_wide_ci_is_not_too_few() -> None:
    """A gap of the MDE's order whose CI spans 0 is "no clear difference", not "too few"."""
    n = 60
    a = np.zeros(n)
    b = np.zeros(n)
    a[:9] = 1.0  # A right alone on 9, B right alone on 3: gap +10 pp
    b[9:12] = 1.0
    res = compare_arms(_as_dict(a), _as_dict(b), n_resamples=2000, seed=0)
    assert res.ci_low <= 0 <= res.ci_high  # neither bound clears 0
    assert res.mde is not None and res.mde < 3 * res.diff
    assert res.verdict.startswith("no clear difference")


def test_seed_spread_and_seed_means() -> None:
    sp = seed_spread([0.60, 0.62, 0.58])
    assert sp.mean == pytest.approx(0.60)
    assert sp.std == pytest.approx(pystats.stdev([0.60, 0.62, 0.58]))
    assert seed_spread([0.5]).std is None
    A = {"q1": 2 / 3, "q2": 1.0, "q3": 0.0}
    B = {"q1": 1 / 3, "q2": 1.0, "q3": 1 / 3}
    res = compare_arms(A, B, n_resamples=200, seeds_a=[0.5, 0.6, 0.6], seeds_b=[0.5, 0.55, 0.6])
    assert res.mcnemar_kind.startswith("exact sign test")
    assert res.seeds_a is not None and res.seeds_a.ex == (0.5, 0.6, 0.6)
    assert res.mde == pytest.approx(mde_paired(3, ((1 / 3) ** 2 + (1 / 3) ** 2) / 3))
