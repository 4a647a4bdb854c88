"""ORPO's log-odds on confident completions: right values, finite loss and gradients."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from matsql.train.losses import LOGP_MAX, log1mexp, log_odds, odds_ratio_loss  # noqa: E402

# log p from very unlikely to nearly certain (both sides of the -ln 2 branch point)
GRID = [-50.0, -5.0, -1.0, -0.7, -math.log(2), -0.6, -0.1, -1e-2, -1e-4, -1e-6]


def test_log1mexp_matches_float64_reference():
    x = torch.tensor(GRID, dtype=torch.float32)
    got = log1mexp(x).double()
    want = torch.tensor([math.log(-math.expm1(v)) for v in GRID], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_log_odds_matches_definition_where_p_is_representable():
    logp = torch.tensor([-3.0, -0.5, -0.01], dtype=torch.float64)
    p = logp.exp()
    assert torch.allclose(log_odds(logp).double(), (p / (1 - p)).log(), rtol=1e-5)


@pytest.mark.parametrize("value", [-1e-8, -1e-7, 0.0, 1e-7])
def test_confident_logps_give_finite_loss_and_gradients(value):
    """Average log p of a short confident completion ("Conclude: correct") sits at -1e-8, or
    rounds to 0 (or just above) in float32: 1 - p underflows."""
    chosen = torch.tensor([value, -0.5], requires_grad=True)
    rejected = torch.tensor([value, value], requires_grad=True)
    losses, cr, rr, ratio, lor = odds_ratio_loss(chosen, rejected, beta=0.1)
    (-losses.mean()).backward()
    for t in (losses, cr, rr, ratio, lor, chosen.grad, rejected.grad):
        assert torch.isfinite(t).all(), t
    # equal log p on both sides: log-odds ratio 0, loss beta * ln 2
    assert losses[0].item() == pytest.approx(0.1 * math.log(0.5), abs=1e-6)


def test_gradient_is_bounded_by_the_cap_and_points_the_right_way():
    chosen = torch.tensor([-1e-3, -2.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -1e-3], requires_grad=True)
    losses, *_ = odds_ratio_loss(chosen, rejected, beta=0.1)
    (-losses.sum()).backward()
    # minimising -loss raises chosen and lowers rejected log p
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    assert chosen.grad.abs().max() < 0.1 / -LOGP_MAX


def test_values_above_the_cap_have_zero_gradient_not_nan():
    x = torch.tensor([0.0, -1e-9, 1e-6], requires_grad=True)
    log_odds(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))


def test_rewards_are_beta_times_average_logp():
    chosen, rejected = torch.tensor([-0.2, -1.5]), torch.tensor([-0.9, -0.1])
    _, cr, rr, _, _ = odds_ratio_loss(chosen, rejected, beta=0.25)
    assert torch.allclose(cr, 0.25 * chosen) and torch.allclose(rr, 0.25 * rejected)
