"""Decode-step time with transformers' SDPA path vs matsql's grouped-query decode attention.

transformers <= 5.17 (the GPU image's version) expands the KV cache with ``repeat_kv`` on every
decode step of a padded batch; ``matsql.backends.attention`` attends per key/value head instead
(see that module). This times the two side by side on the same model, the same left-padded
batch and the same prefilled cache contents: prefill once per path, then ``--steps`` greedy
decode forwards, median of ``--repeats``. It also checks that both paths pick the same tokens.

    python benchmarks/bench_decode_attention.py --model qwen2.5-coder-0.5b-instruct --batch 256 \
        --prompt-tokens 1000 --steps 32                      # GPU
    python benchmarks/bench_decode_attention.py --model qwen2.5-coder-0.5b-instruct --device cpu \
        --batch 8 --prompt-tokens 384 --steps 8 --repeats 2  # CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any


def _batch(vocab: int, batch: int, target: int, spread: float, seed: int, device: Any):
    import torch

    g = torch.Generator().manual_seed(seed)
    lens = [
        max(8, int(target * (1 + spread * (2 * torch.rand(1, generator=g).item() - 1)))) for _ in range(batch)
    ]
    width = max(lens)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, width - n :] = torch.randint(100, vocab - 100, (n,), generator=g)
        mask[i, width - n :] = 1
    return ids.to(device), mask.to(device), sum(lens)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_path(model: Any, impl: str, ids: Any, mask: Any, steps: int) -> tuple[float, Any]:
    """Prefill, then time ``steps`` greedy decode forwards; returns (seconds per step, tokens)."""
    import torch

    model.set_attn_implementation(impl)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        cache, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        toks, m = [tok], mask
        _sync(ids.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            m = torch.cat([m, torch.ones_like(tok)], 1)
            out = model(input_ids=tok, attention_mask=m, past_key_values=cache, use_cache=True)
            cache, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(tok)
        _sync(ids.device)
    return (time.perf_counter() - t0) / steps, torch.cat(toks, 1).cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import torch
    import transformers

    from matsql.backends.attention import NAME, register
    from matsql.models import load_model_and_tokenizer

    model, _tok = load_model_and_tokenizer(a.model, dtype=a.dtype, device=a.device)
    register()
    dev = next(model.parameters()).device
    ids, mask, real = _batch(model.config.vocab_size, a.batch, a.prompt_tokens, a.spread, 0, dev)
    cfg = model.config
    print(
        f"{a.model} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, "
        f"transformers {transformers.__version__}, torch {torch.__version__}; {cfg.num_attention_heads} query "
        f"heads over {cfg.num_key_value_heads} KV heads; batch {a.batch} x {ids.shape[1]} padded "
        f"({real} real prompt tokens), {a.steps} decode steps, median of {a.repeats}"
    )
    run_path(model, "sdpa", ids[:, : min(64, ids.shape[1])], mask[:, : min(64, ids.shape[1])], 2)  # warm-up
    res: dict[str, Any] = {}
    tokens = {}
    for impl in ("sdpa", NAME):
        times = []
        for _ in range(a.repeats):
            s, t = run_path(model, impl, ids, mask, a.steps)
            times.append(s)
        tokens[impl] = t
        res[impl] = {"ms_per_step": 1000 * statistics.median(times), "runs_ms": [1000 * x for x in times]}
        print(f"  {impl:12s} {res[impl]['ms_per_step']:9.2f} ms per decode step")
    same = torch.equal(tokens["sdpa"], tokens[NAME])
    ratio = res["sdpa"]["ms_per_step"] / res[NAME]["ms_per_step"]
    agree = (tokens["sdpa"] == tokens[NAME]).float().mean().item()
    print(f"  speed-up {NAME} / sdpa: {ratio:.2f}x; greedy tokens identical: {same} ({agree:.1%} agree)")
    if a.json:
        res |= {
            "args": vars(a),
            "speedup": ratio,
            "tokens_identical": same,
            "token_agreement": agree,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "device": str(dev),
        }
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
