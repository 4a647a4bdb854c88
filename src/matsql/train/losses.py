"""ORPO's odds-ratio term, safe for confident completions.

ORPO compares the log-odds ``log(p / (1 - p))`` of the chosen and rejected completions, where
``log p`` is the *average* per-token log-probability of a completion. Validator critiques end
in short, near-certain text ("Conclude: correct"), so ``log p`` comes close to 0 and ``1 - p``
underflows. TRL 1.16's ``log1mexp`` is stable in value but not in gradient: it evaluates both
``torch.where`` branches on every input, and the unused ``log1p(-exp(x))`` branch is ``-inf``
near 0, so backward gives ``0 * inf = NaN`` (at ``log p = -1e-8`` in float32), and ``log p = 0``
gives a NaN loss. Here each branch only ever sees inputs on which it is finite, and ``log p``
is capped at ``LOGP_MAX``: a float32 log-softmax near 0 has an absolute error of about 1e-6, so
values above that cap carry no information, and the cap keeps the gradient of the log-odds
(``1 / (1 - p)``) bounded by 1e6 instead of reaching infinity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGP_MAX = -1e-6
_LN_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, finite in value and gradient for every input.

    Uses ``log(-expm1(x))`` for ``x > -ln 2`` and ``log1p(-exp(x))`` below (Maechler 2012);
    inputs above ``LOGP_MAX`` are treated as ``LOGP_MAX`` (zero gradient there)."""
    x = x.clamp(max=LOGP_MAX)
    far = x < _LN_HALF
    # each branch gets a harmless stand-in where it is not selected, so its gradient is finite
    x_far = torch.where(far, x, torch.full_like(x, 2 * _LN_HALF))
    x_near = torch.where(far, torch.full_like(x, LOGP_MAX), x)
    return torch.where(far, torch.log1p(-torch.exp(x_far)), torch.log(-torch.expm1(x_near)))


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` from ``log p`` (capped at ``LOGP_MAX``, see module doc)."""
    logp = logp.float().clamp(max=LOGP_MAX)
    return logp - log1mexp(logp)


def odds_ratio_loss(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same outputs as TRL's ``ORPOTrainer.odds_ratio_loss``:
    ``(beta * logsigmoid(log-odds ratio), chosen_rewards, rejected_rewards, mean ratio, mean log-odds)``.

    The trainer's loss is ``nll - mean(first output)``; rewards are ``beta * log p`` (detached)."""
    lor = log_odds(chosen_logps) - log_odds(rejected_logps)
    ratio = F.logsigmoid(lor)
    losses = beta * ratio
    chosen_rewards = beta * chosen_logps.detach().float()
    rejected_rewards = beta * rejected_logps.detach().float()
    return losses, chosen_rewards, rejected_rewards, ratio.mean(), lor.mean()
