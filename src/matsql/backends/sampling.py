"""Batch-invariant sampling: each row draws from its own counter-based random stream.

``torch.multinomial`` inside ``generate`` shares one global generator across the batch, so a
sample depends on which other prompts were batched with it and on how many steps earlier
batches ran. Here row ``r`` at decode step ``s`` uses one uniform ``u = U(key_r, s)``, the
``s``-th output of SplitMix64 seeded with the row's key, and takes the token whose interval of
the cumulative distribution of ``softmax(logits / T)`` contains ``u`` (inverse-CDF sampling,
exactly a draw from that distribution). A row's tokens then depend only on its key and its
logits, which makes samples reproducible across batch sizes, orders and resumed runs (up to
floating-point differences in the logits themselves, e.g. bf16 with different padding).

Why inverse CDF and not Gumbel-max: Gumbel-max needs one random number per vocabulary entry,
i.e. rows x 152k hashes per step (int64 arithmetic, which GPUs emulate) plus two logs; inverse
CDF needs one random number per row, computed for all steps of a batch at once on the host,
then per step a softmax, a cumulative sum and a binary search per row: about what
``torch.multinomial`` costs, in five kernels. The cumulative sum is float64 so that rounding
never moves probability between tokens (a float32 running sum over 152k entries would round
away tail tokens below ~1e-8 each). The keyed Gumbel-max sampler of matsql 0.1 drew from the
same distribution but with other random numbers: a seed gives other samples than it did there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (numpy wraps uint64 arithmetic modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def row_uniforms(keys: Sequence[int], first_step: int, steps: int) -> np.ndarray:
    """``(len(keys), steps)`` float64 uniforms in [0, 1) for decode steps ``first_step ...``.

    Entry ``[r, j]`` is the ``(first_step + j)``-th output of SplitMix64 seeded with
    ``keys[r]``, cut to 52 bits: a pure function of (key, step). 52 bits keep ``u * total``
    strictly below ``total`` in float64 rounding, so a draw never falls past the last token.
    """
    if steps < 0 or first_step < 0:
        raise ValueError(f"need first_step >= 0 and steps >= 0, got {first_step}, {steps}")
    k = np.array([int(x) & ((1 << 64) - 1) for x in keys], dtype=np.uint64)
    s = (first_step + np.arange(1, steps + 1)).astype(np.uint64)
    bits = splitmix64(k[:, None] + s[None, :] * _GOLDEN) >> np.uint64(12)
    return bits.astype(np.float64) * 2.0**-52


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the smallest nucleus with mass >= ``top_p`` to -inf (keeps >= 1 token)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = mass_before >= top_p
    remove = torch.zeros_like(remove_sorted).scatter(-1, idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def inverse_cdf_sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Row ``r``'s token under ``softmax(logits[r])``: the first index whose cumulative
    probability exceeds ``u[r] * total`` (``u``: float64 multiples of 2**-52 in [0, 1), see
    ``row_uniforms``). Zero-probability tokens (-inf logits) are never drawn."""
    cdf = torch.cumsum(torch.softmax(logits.float(), dim=-1), dim=-1, dtype=torch.float64)
    v = u.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, v, right=True).squeeze(1)


class KeyedSampler:
    """A ``generate`` logits processor that turns greedy decoding into keyed sampling.

    Use with ``do_sample=False``: it draws each row's token (see module doc) and returns the
    scores with ``+inf`` at that token, so ``generate``'s argmax picks it. ``start_len`` is the
    (padded) input length, so the step index is ``len - start_len``; ``steps`` bounds how many
    steps ``generate`` may run (its ``max_new_tokens``).
    """

    def __init__(
        self,
        keys: Sequence[int],
        temperature: float,
        top_p: float,
        start_len: int,
        *,
        steps: int,
    ) -> None:
        if temperature <= 0:
            raise ValueError("KeyedSampler needs temperature > 0 (use greedy decoding for T=0)")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.start_len = start_len
        self.uniforms = torch.from_numpy(row_uniforms(keys, 0, steps))

    def sample(self, scores: torch.Tensor, step: int) -> torch.Tensor:
        """Tokens for local step ``step`` (0 = the first new token of this ``generate`` call)."""
        if not 0 <= step < self.uniforms.shape[1]:
            raise IndexError(
                f"step {step} outside the {self.uniforms.shape[1]} steps this sampler was made for"
            )
        if self.uniforms.device != scores.device:  # moved once per batch, not per step
            self.uniforms = self.uniforms.to(scores.device)
        x = scores.float()
        if self.temperature != 1.0:
            x = x / self.temperature
        return inverse_cdf_sample(top_p_mask(x, self.top_p), self.uniforms[:, step])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = self.sample(scores, input_ids.shape[1] - self.start_len)
        return scores.scatter_(1, tokens[:, None], float("inf"))
