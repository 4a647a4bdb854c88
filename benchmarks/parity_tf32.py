"""Why do vLLM's float32 greedy completions part from the transformers backend's? (CPU, no vLLM)

Session 8's float32 parity run (``results/vllm/s8/parity_fp32_base.*``) found 11 of 200 greedy
planner completions differing, where two float32 engines should agree on nearly all. The
suspect: in float32 vLLM picks its Triton attention backend (FlashAttention and FlashInfer take
16-bit inputs only), and Triton's ``tl.dot`` multiplies float32 inputs as TF32 (10 mantissa
bits) unless ``TRITON_F32_DEFAULT=ieee`` is set; the rest of vLLM's float32 model runs on cuBLAS
at "highest" precision.

This script tests that on the run's own texts, without a GPU. Greedy decoding follows a path
until the first position where another engine's argmax differs, so one forward pass over the
prompt and the transformers backend's completion (teacher forcing) finds, for each prompt, where
an engine whose attention rounds its matmul inputs to TF32 would part: the first position where
its argmax differs from exact float32 attention. The emulation rounds Q, K, the softmax weights
and V to TF32 (round to nearest) and accumulates in float32, as the Triton kernel does; its
tiling and summation order differ, so it predicts how often and near which tokens completions
part, not each parting.

Printed and written (``--out``): per prompt the first TF32 flip, the exact top-2 logit gap at
the recorded parting, and, as the control, positions where this CPU's exact float32 argmax
disagrees with the recorded (GPU, float32) transformers completion.

    python benchmarks/parity_tf32.py results/vllm/s8/parity_fp32_base.texts.jsonl.gz --rows 200 --out tf32.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path
from typing import Any

import torch


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10 mantissa bits, to nearest (ties away), kept as float32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


def tf32_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention whose two matmuls take TF32-rounded inputs (transformers' interface)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(tf32_round(query), tf32_round(key).transpose(-1, -2)) * scaling
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
    scores = scores.masked_fill(causal[-scores.shape[-2] :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(tf32_round(probs), tf32_round(value))
    return out.transpose(1, 2).contiguous(), None


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token, or None when one list is the other."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def completion_logits(model: Any, ids: list[int], n: int, attn: str) -> torch.Tensor:
    """Logits at the ``n`` positions that predict the last ``n`` tokens of ``ids``."""
    model.config._attn_implementation = attn
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), logits_to_keep=n + 1, use_cache=False)
    return out.logits[0, :-1].float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("texts", help="a .texts.jsonl.gz written by benchmarks/vllm_parity.py --mode greedy")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rows", type=int, default=200, help="the first N prompts (the parted ones always)")
    ap.add_argument("--only", default=None, help="comma-separated prompt indices (e.g. to look again)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from transformers import AttentionInterface

    from matsql.backends.transformers_local import LocalBackend, LocalEngine
    from matsql.evaluate.portable import portable_text

    AttentionInterface.register("tf32_emulated", tf32_attention)
    with gzip.open(args.texts, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    parted = {r["i"] for r in rows if r["vllm"] != r["transformers"]}
    chosen = [r for r in rows if r["i"] < args.rows or r["i"] in parted]
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        chosen = [r for r in chosen if r["i"] in keep]

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from vllm_parity import planner_prompts

    prompts = planner_prompts(max(r["i"] for r in chosen) + 1)
    engine = LocalEngine.load(args.model, device="cpu", dtype="float32")
    backend = LocalBackend(engine, adapter=None)
    tok, model = engine.tokenizer, engine.model
    model.eval()

    per_row = []
    t0 = time.perf_counter()
    for r in chosen:
        prompt = backend.encode(prompts[r["i"]])
        t_ids = tok(r["transformers"], add_special_tokens=False).input_ids
        v_ids = tok(r["vllm"], add_special_tokens=False).input_ids
        ids = prompt + t_ids
        exact = completion_logits(model, ids, len(t_ids), "sdpa")
        rounded = completion_logits(model, ids, len(t_ids), "tf32_emulated")
        e_arg, t_arg = exact.argmax(-1), rounded.argmax(-1)
        gaps = top2_gap(exact)
        target = torch.tensor(t_ids)
        flips = (t_arg != e_arg).nonzero().flatten().tolist()
        cpu_off = (e_arg != target).nonzero().flatten().tolist()
        # how far the recorded token is below this CPU's argmax there: a near tie is rounding; a
        # clear margin means the decoded text re-tokenizes otherwise than it was generated
        off_margin = [float(exact[j, e_arg[j]] - exact[j, target[j]]) for j in cpu_off[:5]]
        part = first_difference(t_ids, v_ids) if r["i"] in parted else None
        row: dict[str, Any] = {
            "i": r["i"],
            "tokens": len(t_ids),
            "parted_at": part,
            "tf32_first_flip": flips[0] if flips else None,
            "cpu_exact_off_path": cpu_off[:5],
            "off_path_margin": off_margin,
            "min_gap": float(gaps.min()),
            "max_abs_logit_change": float((rounded - exact).abs().max()),
        }
        if part is not None and part < len(t_ids):
            row["gap_at_parting"] = float(gaps[part])
            row["vllm_token_is_runner_up"] = int(exact[part].topk(2).indices[1]) == v_ids[part]
            row["tf32_flips_at_parting"] = bool(t_arg[part] != e_arg[part])
        per_row.append(row)
        print(json.dumps(row), flush=True)

    def share(rs: list[dict[str, Any]], key: str) -> float:
        return sum(x[key] is not None for x in rs) / max(len(rs), 1)

    first_n = [x for x in per_row if x["i"] < args.rows]
    summary = {
        "texts": Path(args.texts).name,
        "rows": len(first_n),
        "recorded_parted": sum(x["parted_at"] is not None for x in first_n) / max(len(first_n), 1),
        "tf32_emulated_parts": share(first_n, "tf32_first_flip"),
        "cpu_exact_off_path": sum(bool(x["cpu_exact_off_path"]) for x in first_n) / max(len(first_n), 1),
        "parted_rows": [x for x in per_row if x["parted_at"] is not None],
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"{summary['rows']} prompts: recorded float32 partings {summary['recorded_parted']:.1%}; "
        f"TF32-rounded attention parts {summary['tf32_emulated_parts']:.1%} from exact attention; "
        f"this CPU's exact argmax leaves the recorded path on {summary['cpu_exact_off_path']:.1%}"
    )
    if args.out:
        summary["per_row"] = per_row
        Path(args.out).write_text(portable_text(json.dumps(summary, indent=1)) + "\n")


if __name__ == "__main__":
    main()
