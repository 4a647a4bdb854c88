"""Decode-step attention for grouped-query models without ``repeat_kv``.

Qwen2.5 has 14 query heads over 2 key/value heads. transformers up to at least 5.17 (the GPU
image's version) calls SDPA on padded batches with ``repeat_kv``: every decode step copies the
whole KV cache seven times (256 rows x 1,100 tokens: ~24 GB of memory traffic per step), so a
0.5B model decodes at ~60-90 ms per step on an H100. For one query token the copy is not needed:
the query heads of a group are stacked as the "sequence" of their key/value head and attend to
the cache as it is (the trick later transformers releases adopted as ``pack_gqa``). Prefill and
every other case go to transformers' own SDPA function, unchanged.

``use_gqa_decode(model)`` registers the function (and SDPA's mask builder) under ``NAME`` and
switches the model to it; ``LocalEngine`` does this for inference on accelerators.
"""

from __future__ import annotations

from typing import Any

NAME = "matsql_sdpa"


def gqa_decode_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function signature: query (B, H, q, D), key/value (B, KVH, L, D)
    -> output (B, q, H, D)."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    special = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    if query.shape[2] != 1 or groups == 1 or special:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    b, h, _, d = query.shape
    kvh = key.shape[1]
    q = query.reshape(b, kvh, groups, d)  # head i = kv head i // groups, member i % groups
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        if mask.shape[1] == h:  # a per-head mask: split like the heads
            mask = mask.reshape(mask.shape[0], kvh, groups, mask.shape[-1])
        # else (B or 1, 1, 1, L): broadcasts over key/value heads and group members as it is
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(out.shape[0], h, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, gqa_decode_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_gqa_decode(model: Any) -> bool:
    """Switch ``model`` (a transformers model, not yet wrapped by PEFT) to ``NAME`` if it is a
    grouped-query model running on SDPA; returns whether it did."""
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if not heads or kv == heads or getattr(cfg, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    model.set_attn_implementation(register())
    return True
