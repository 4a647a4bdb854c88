"""A process's share of its GPU's memory, set by the experiment runner when processes share cards.

``LocalExecutor(gpu_slots=N)`` runs up to N processes per card; each gets
``MATSQL_GPU_MEMORY_FRACTION`` = (its slots on the card) / N. Without a cap PyTorch's caching
allocator keeps each process's peak (a 256-row prefill of 1,500-token prompts: ~25 GB), and
three such processes plus a training stage ran an 80 GB H100 out of memory (session 4). Under
the cap an allocation past the share raises ``torch.OutOfMemoryError`` in that process only.
Training stages apply the cap (``train/runner.py``). The transformers backend does not: it is
the CPU engine, and on a GPU it runs plain ``generate`` uncapped (give it a card of its own).
A vLLM engine sizes its own memory instead
(``gpu_memory_utilization``, the fraction of the card it takes at start-up: weights, activations
and a KV cache filling the rest): the vllm backend scales it by the share
(:func:`vllm_memory_utilization`), so two rollouts, or a rollout and a training stage, fit on one
card.
"""

from __future__ import annotations

import os

ENV = "MATSQL_GPU_MEMORY_FRACTION"


def memory_share() -> float | None:
    """The share from the environment (0 < share <= 1), or None; a bad value is an error."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        share = float(raw)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise ValueError(f"{ENV} must be a number in (0, 1], got {raw!r}")
    return share


def apply_memory_share(device: object = None) -> float | None:
    """Cap this process's allocations on its CUDA device at the share, if one is set; returns it."""
    share = memory_share()
    if share is None or share >= 1:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    dev = device if device is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(share, dev)
    return share


def vllm_memory_utilization(configured: float, share: float | None) -> float:
    """The ``gpu_memory_utilization`` a vLLM engine starts with in a process holding ``share`` of
    its card (:func:`memory_share`): the configured fraction of the whole card, scaled by the
    share (0.8 at a share of 0.5: 0.4), so each engine keeps the headroom the agents file gives it
    alone (CUDA context, sampler buffers) and the engines beside it fit. No share, or the whole
    card: the configured value."""
    if share is None or share >= 1:
        return configured
    return round(configured * share, 4)


def disable_cudnn_attention() -> bool:
    """Turn SDPA's cuDNN backend off (flash / memory-efficient kernels remain; no-op without
    CUDA); returns whether it was on. On the H100 image (torch 2.11, CUDA 13) cuDNN's fused
    attention failed mid-rollout with "Expected mha_graph.execute(...).is_good()" on padded
    batches of a nearly full card, killing two evaluation stages in session 4;
    pytorch/pytorch#134001 and #190321 report the same failure and this workaround. Training
    turned it off from the start."""
    import torch

    if not torch.cuda.is_available():
        return False
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    return was
