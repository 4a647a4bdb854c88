"""Keyed inverse-CDF sampling: exact distribution, pure function of (key, step, logits)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
stats = pytest.importorskip("scipy.stats")

from matsql.backends.sampling import KeyedSampler, inverse_cdf_sample, row_uniforms  # noqa: E402

NEG = float("-inf")
LOGITS = [2.0, 1.0, 0.0, -1.0, NEG, 3.0, -4.0, 0.5]
N = 60_000  # keyed draws per distribution check


def draws(logits: list[float], temperature: float, top_p: float = 1.0, step: int = 0) -> np.ndarray:
    """Token counts of N rows with keys 0..N-1, all seeing the same logits."""
    x = torch.tensor([logits]).expand(N, -1).contiguous()
    s = KeyedSampler(range(N), temperature, top_p, start_len=0, steps=step + 1)
    return np.bincount(s.sample(x, step).numpy(), minlength=len(logits))


def assert_matches(counts: np.ndarray, probs: np.ndarray) -> None:
    """Zero-probability tokens never drawn; the rest pass a chi-square goodness-of-fit test."""
    support = probs > 0
    assert counts[~support].sum() == 0
    p = stats.chisquare(counts[support], probs[support] / probs[support].sum() * counts.sum()).pvalue
    assert p > 1e-3, f"keyed samples do not follow the distribution (chi-square p={p:.2e})"


@pytest.mark.parametrize(("temperature", "step"), [(1.0, 0), (0.5, 7), (2.0, 300)])
def test_frequencies_follow_softmax(temperature: float, step: int) -> None:
    probs = torch.softmax(torch.tensor(LOGITS) / temperature, -1).double().numpy()
    assert_matches(draws(LOGITS, temperature, step=step), probs)


def test_top_p_draws_from_the_renormalised_nucleus() -> None:
    probs = torch.softmax(torch.tensor(LOGITS), -1).double().numpy()
    order = np.argsort(-probs)
    nucleus = order[: np.searchsorted(np.cumsum(probs[order]), 0.8) + 1]  # smallest set with mass >= 0.8
    kept = np.zeros_like(probs)
    kept[nucleus] = probs[nucleus]
    assert 1 < len(nucleus) < 7
    assert_matches(draws(LOGITS, 1.0, top_p=0.8), kept)


def test_a_wrong_distribution_fails_the_check() -> None:
    """The chi-square check has power: samples at T=1 do not pass as T=0.8."""
    probs = torch.softmax(torch.tensor(LOGITS) / 0.8, -1).double().numpy()
    with pytest.raises(AssertionError, match="chi-square"):
        assert_matches(draws(LOGITS, 1.0), probs)


def test_uniforms_are_a_function_of_key_and_step_only() -> None:
    keys = [3, 2**63 - 5, 12345678901234]
    full = row_uniforms(keys, 0, 40)
    assert full.shape == (3, 40) and (full >= 0).all() and (full < 1).all()
    assert np.array_equal(full * 2.0**52, np.floor(full * 2.0**52))  # 52-bit grid: u * total < total
    assert np.array_equal(row_uniforms(keys[1:], 10, 30), full[1:, 10:])
    assert len(np.unique(full)) == full.size  # no repeats across keys and steps
    u = row_uniforms(range(50_000), 3, 1)[:, 0]
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_a_rows_token_ignores_its_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5000) * 3
    keys = [11, 22, 33, 44, 55, 66]
    full = KeyedSampler(keys, 0.9, 1.0, start_len=0, steps=4).sample(x, 2)
    perm = [4, 1, 5]
    part = KeyedSampler([keys[i] for i in perm], 0.9, 1.0, start_len=0, steps=4).sample(x[perm], 2)
    assert part.tolist() == full[perm].tolist()


def test_processor_makes_argmax_pick_the_sample() -> None:
    torch.manual_seed(1)
    scores = torch.randn(4, 300)
    s = KeyedSampler([1, 2, 3, 4], 1.0, 1.0, start_len=10, steps=5)
    want = s.sample(scores, 3)
    assert not torch.equal(want, scores.argmax(-1))  # sampling, not greedy
    out = s(torch.zeros(4, 13, dtype=torch.long), scores.clone())
    assert out.argmax(-1).tolist() == want.tolist()
    with pytest.raises(IndexError, match="step 5"):
        s(torch.zeros(4, 15, dtype=torch.long), scores.clone())


def test_cold_temperature_is_greedy_and_edges_stay_in_support() -> None:
    torch.manual_seed(2)
    x = torch.randn(8, 1000)
    assert (
        KeyedSampler(range(8), 1e-4, 1.0, start_len=0, steps=1).sample(x, 0).tolist() == x.argmax(-1).tolist()
    )
    row = torch.tensor([[NEG, 0.0, 1.0, NEG, NEG]]).expand(2, -1)
    u = torch.tensor([0.0, 1.0 - 2.0**-52], dtype=torch.float64)  # the extreme uniforms
    assert inverse_cdf_sample(row, u).tolist() == [1, 2]  # first and last token with mass


def test_rejects_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature > 0"):
        KeyedSampler([1], 0.0, 1.0, start_len=0, steps=1)
