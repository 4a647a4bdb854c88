"""The grouped-query decode attention equals transformers' SDPA path, token for token."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny(heads: int = 8, kv_heads: int = 2):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
    )
    cfg._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(cfg).eval()


def _tiny_gqa(impl: str):
    model = _tiny()
    if impl != "sdpa":
        from matsql.backends.attention import use_gqa_decode

        assert use_gqa_decode(model)
        assert model.config._attn_implementation == "matsql_sdpa"
    return model


def _left_padded():
    torch.manual_seed(1)
    lens = [7, 12, 3]
    width = max(lens)
    ids = torch.zeros(len(lens), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, width - n :] = torch.randint(1, 97, (n,))
        mask[i, width - n :] = 1
    return ids, mask


def test_decode_logits_match_sdpa_on_padded_batches():
    ids, mask = _left_padded()
    ref, new = _tiny_gqa("sdpa"), _tiny_gqa("gqa")
    with torch.inference_mode():
        outs = []
        for m in (ref, new):
            pre = m(input_ids=ids, attention_mask=mask, use_cache=True)
            nxt = pre.logits[:, -1].argmax(-1, keepdim=True)
            step = m(
                input_ids=nxt,
                attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
                past_key_values=pre.past_key_values,
                use_cache=True,
            )
            outs.append(step.logits[:, -1])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_greedy_generation_is_identical():
    ids, mask = _left_padded()
    runs = []
    for impl in ("sdpa", "gqa"):
        m = _tiny_gqa(impl)
        with torch.inference_mode():
            runs.append(
                m.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0
                )
            )
    assert torch.equal(runs[0], runs[1])


def test_models_without_grouped_heads_are_left_alone():
    from matsql.backends.attention import use_gqa_decode

    assert not use_gqa_decode(_tiny(heads=4, kv_heads=4))
