"""Batch-invariant sampling: each row draws from its own counter-based random stream.

``torch.multinomial`` inside ``generate`` shares one global generator across the batch, so a
sample depends on which other prompts were batched with it and on how many steps earlier
batches ran. Here a row's noise is a hash of (row key, step, token id), and sampling is
``argmax(logits / T + Gumbel noise)`` (the Gumbel-max trick, exactly a draw from
``softmax(logits / T)``). A row's tokens then depend only on its key and its logits, which
makes samples reproducible across batch sizes, orders and resumed runs (up to floating-point
differences in the logits themselves, e.g. bf16 with different padding).
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic on negatives)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finalizer on int64 tensors (wrap-around multiplication)."""
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def uniform_noise(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """``(len(keys), vocab)`` uniforms in (0, 1), a pure function of (key, step, column)."""
    counter = torch.arange(vocab, device=keys.device, dtype=torch.int64) + step * vocab
    z = keys.to(torch.int64)[:, None] + counter[None, :] * _GOLDEN
    bits24 = _srl(splitmix64(z), 40)
    return (bits24.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def gumbel_noise(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    return -torch.log(-torch.log(uniform_noise(keys, step, vocab)))


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the smallest nucleus with mass >= ``top_p`` to -inf (keeps >= 1 token)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = mass_before >= top_p
    remove = torch.zeros_like(remove_sorted).scatter(-1, idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


class KeyedSampler:
    """A ``generate`` logits processor that turns greedy decoding into keyed sampling.

    Use with ``do_sample=False``: greedy argmax over ``logits / T + Gumbel`` is a sample.
    ``start_len`` is the (padded) prompt length, so the step index is ``len - start_len``.
    """

    def __init__(
        self, keys: list[int], temperature: float, top_p: float, start_len: int, chunk_rows: int = 64
    ) -> None:
        if temperature <= 0:
            raise ValueError("KeyedSampler needs temperature > 0 (use greedy decoding for T=0)")
        self.keys = torch.tensor([k & ((1 << 63) - 1) for k in keys], dtype=torch.int64)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.start_len = start_len
        self.chunk_rows = chunk_rows  # bounds the int64 temporaries to chunk_rows x vocab

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.start_len
        if self.keys.device != scores.device:
            self.keys = self.keys.to(scores.device)
        keys = self.keys
        out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for a in range(0, scores.shape[0], self.chunk_rows):
            b = min(a + self.chunk_rows, scores.shape[0])
            x = top_p_mask(scores[a:b].float() / self.temperature, self.top_p)
            out[a:b] = x + gumbel_noise(keys[a:b], step, scores.shape[1])
        return out
