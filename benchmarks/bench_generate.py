"""Rollout-style generation throughput of LocalBackend vs plain ``model.generate``.

Builds ``--questions`` synthetic schema-style prompts whose lengths spread around
``--prompt-tokens`` (real schema prompts vary, which is where padding waste comes from), then
times LocalBackend (length-sorted batches, keyed sampling) and, as the baseline, plain
``model.generate`` over the same prompts in their given order with the same batch size. Both
count generated tokens up to and including the end token. Prints questions/s, new tokens/s and
the ratio LocalBackend / baseline.

Reference (DEVICE.md, H100, Qwen2.5-Coder-0.5B bf16, plain generate, T=1, 128 new tokens):
7,105 new tokens/s at batch 512 with 794-token prompts.

    python benchmarks/bench_generate.py --model qwen2.5-coder-0.5b-instruct --questions 1024 \
        --batch-size 512 --prompt-tokens 794 --new-tokens 128            # GPU
    python benchmarks/bench_generate.py --model smollm2-135m-instruct --device cpu \
        --questions 16 --batch-size 8 --prompt-tokens 96 --new-tokens 16  # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

REFERENCE = {"new_tokens_per_s": 7105, "batch": 512, "prompt_tokens": 794, "device": "H100, plain generate"}

TYPES = ("INTEGER", "TEXT", "REAL", "DATE")


def synthetic_prompts(tokenizer: Any, count: int, target: int, spread: float, seed: int) -> list[Any]:
    """Schema + question chat prompts, each padded with CREATE TABLE lines to a drawn length."""
    from matsql.backends.base import ChatPrompt
    from matsql.backends.chat import encode_rendered, render_chat

    rng = random.Random(seed)
    prompts = []
    for q in range(count):
        want = max(16, round(target * rng.uniform(1 - spread, 1 + spread)))
        lines: list[str] = []
        question = f"Question {q}: how many rows of t{q % 7} have c1 above {rng.randint(1, 99)}?"
        while True:
            p = ChatPrompt.of(
                [
                    {"role": "system", "content": "Write one SQLite query."},
                    {"role": "user", "content": "\n".join([*lines, question])},
                ]
            )
            n = len(encode_rendered(tokenizer, [render_chat(tokenizer, p)])[0])
            if n >= want:
                break
            cols = ", ".join(f"c{j} {rng.choice(TYPES)}" for j in range(rng.randint(2, 6)))
            lines.append(f"CREATE TABLE t{len(lines)} (id INTEGER PRIMARY KEY, {cols});")
        prompts.append(p)
    return prompts


def run_backend(backend: Any, prompts: list[Any], args: argparse.Namespace) -> dict[str, float]:
    backend.stats.__init__()
    t0 = time.perf_counter()
    backend.generate(
        prompts, n=args.n, temperature=args.temperature, max_tokens=args.new_tokens, seed=args.seed
    )
    dt = time.perf_counter() - t0
    s = backend.stats
    return {
        "seconds": dt,
        "questions_per_s": len(prompts) / dt,
        "new_tokens_per_s": s.completion_tokens / dt,
        "new_tokens": s.completion_tokens,
        "padded_prompt_tokens": s.extra.get("padded_prompt_tokens", 0),
        "prompt_tokens": s.prompt_tokens,
    }


def run_plain(engine: Any, prompts: list[Any], args: argparse.Namespace) -> dict[str, float]:
    """The baseline: tokenizer padding + ``model.generate`` per batch in the given order."""
    import torch

    from matsql.backends.chat import cut_at_stop_ids

    tok, model = engine.tokenizer, engine.model
    tok.padding_side = "left"
    texts = [engine.render(p) for p in prompts]
    sample = args.temperature > 0
    new = padded = 0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, len(texts), args.batch_size):
            enc = tok(
                texts[a : a + args.batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(engine.device)
            out = model.generate(
                **enc,
                max_new_tokens=args.new_tokens,
                do_sample=sample,
                temperature=args.temperature if sample else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=args.n,
                eos_token_id=engine.stop_ids,
                pad_token_id=engine.stop_ids[0],
            )
            padded += enc["input_ids"].numel()
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                kept, ended = cut_at_stop_ids(row, engine.stop_ids)
                new += len(kept) + int(ended)
    if str(engine.device).startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "questions_per_s": len(texts) / dt,
        "new_tokens_per_s": new / dt,
        "new_tokens": new,
        "padded_prompt_tokens": padded,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--questions", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=794)
    ap.add_argument("--spread", type=float, default=0.5, help="prompt lengths uniform in L*(1 +- spread)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--n", type=int, default=1, help="samples per question")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each; the median is reported")
    ap.add_argument("--baseline", choices=("auto", "yes", "no"), default="auto", help="auto: only on CUDA")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    from matsql.backends.transformers_local import LocalBackend, LocalEngine

    t0 = time.perf_counter()
    engine = LocalEngine.load(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    dev = str(engine.device)
    prompts = synthetic_prompts(engine.tokenizer, args.questions, args.prompt_tokens, args.spread, args.seed)
    backend = LocalBackend(engine, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
    backend.generate(prompts[:2], max_tokens=4)  # warm-up (kernels, allocator)
    res: dict[str, Any] = {"args": vars(args), "device": dev, "load_s": load_s, "model": engine.identifier}
    baseline = args.baseline == "yes" or (args.baseline == "auto" and dev.startswith("cuda"))
    runs: dict[str, list[dict[str, float]]] = {"local_backend": [], "plain_generate": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        runs["local_backend"].append(run_backend(backend, prompts, args))
        if baseline:
            runs["plain_generate"].append(run_plain(engine, prompts, args))
    for name, rs in runs.items():
        if rs:  # the median run by wall time
            res[name] = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
    if baseline:
        for k in ("new_tokens_per_s", "questions_per_s"):
            res[f"ratio_{k}"] = res["local_backend"][k] / res["plain_generate"][k]
    res["reference"] = REFERENCE

    print(
        f"model {engine.identifier} on {dev} (loaded in {load_s:.1f}s); {args.questions} questions x n={args.n}, "
        f"~{args.prompt_tokens} prompt tokens (+-{args.spread:.0%}), {args.new_tokens} new, T={args.temperature}, batch {args.batch_size}, "
        f"median of {args.repeats} runs"
    )
    for name in ("local_backend", "plain_generate"):
        if name in res:
            r = res[name]
            print(
                f"  {name:15s} {r['questions_per_s']:9.2f} questions/s  {r['new_tokens_per_s']:10.1f} new tokens/s  "
                f"({r['new_tokens']} tokens in {r['seconds']:.1f}s, {r['padded_prompt_tokens']} padded prompt tokens)"
            )
    if "ratio_new_tokens_per_s" in res:
        print(
            f"  ratio LocalBackend / plain generate: {res['ratio_new_tokens_per_s']:.2f}x new tokens/s, "
            f"{res['ratio_questions_per_s']:.2f}x questions/s"
        )
    print(
        f"  reference: {REFERENCE['new_tokens_per_s']:,} new tokens/s ({REFERENCE['device']}, batch {REFERENCE['batch']}, "
        f"{REFERENCE['prompt_tokens']}-token prompts)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
