"""Per-step CPU decode time with transformers' dynamic KV cache (grown by torch.cat every step)
against a preallocated static one, the choice LocalEngine makes on a CPU (commit e2fdd51
measured 883 against 204 ms per step for 40 rows of SmolLM2-135M at ~400 tokens, one thread).

Each setting decodes ``--rows`` rows of ``--prompt-tokens`` random ids for ``--new-tokens``
greedy steps (end tokens off, so every row runs the full budget) with one ``model.generate``; a
logits processor stamps the time at every step, and a decode step's time is the median gap
between stamps (the prefill, before the first stamp, is left out), best of ``--repeats``. Caches:

- ``dynamic``: transformers' default cache.
- ``static``: a ``StaticCache`` sized to this call (rows x (prompt + new tokens)), what
  ``LocalEngine`` passes.
- ``static-grown``: ``cache_implementation='static'`` after one call ``--grown-by`` times
  longer on the same model: transformers sizes every later static cache to the longest of the
  model's earlier calls (``_previous_max_cache_length``), so each short call then zeroes and
  attends over the long one's length. LocalEngine used this path from e2fdd51 until it passed
  its own cache.

Outputs of the three are compared token for token (they must be equal).

Measured on the shared 2 cores (load 2-3, one thread; ms per decode step, dynamic / static /
static-grown; identical tokens in every row):

| setting | dynamic | static | static-grown |
|---|---|---|---|
| SmolLM2-135M, 40 rows x 400 + 12 new, grown 2x | 766 | 569 | 798 |
| SmolLM2-135M, 16 rows x 200 + 16 new, grown 4x | 330 | 266 | 386 |
| SmolLM2-135M, 2 rows x 32 + 10 new (a tiny call) | 119 | 120 | 123 |
| tests' tiny model, 3 rows x 40 + 10 new | 2.4 | 2.7 | 2.7 |

    python benchmarks/bench_kv_cache.py --model smollm2-135m-instruct --rows 40 --prompt-tokens 400 \
        --new-tokens 12 --grown-by 2                      # the commit's setting (~8 min: 3 prefills)
    python benchmarks/bench_kv_cache.py --model smollm2-135m-instruct --rows 16 --prompt-tokens 200 \
        --new-tokens 16 --repeats 2
    python benchmarks/bench_kv_cache.py --model smollm2-135m-instruct --rows 2 --prompt-tokens 32 \
        --new-tokens 10 --repeats 3                       # a tiny call
    python benchmarks/bench_kv_cache.py --model tiny --rows 3 --prompt-tokens 40 --new-tokens 10 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any


def load(model: str) -> tuple[Any, int]:
    """(model, vocabulary size) on the CPU; ``tiny`` is the tests' random 2-layer Qwen2."""
    if model == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import build_tiny_model, build_tiny_tokenizer

        tok = build_tiny_tokenizer()
        return build_tiny_model(tok), len(tok)
    from matsql.backends.transformers_local import LocalEngine

    engine = LocalEngine.load(model, device="cpu")
    return engine.model, len(engine.tokenizer)


def decode(model: Any, ids: Any, steps: int, cache: str, grown: int) -> tuple[float, list[list[int]]]:
    """(median seconds per decode step, new ids per row)."""
    import statistics

    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StaticCache

    stamps: list[float] = []

    def stamp(input_ids: Any, scores: Any) -> Any:
        stamps.append(time.perf_counter())
        return scores

    kwargs: dict[str, Any] = {}
    impl = None
    if cache == "static":
        kwargs["cache"] = StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps)
    elif cache == "static-grown":
        impl = "static"
        model._previous_max_cache_length = grown  # what one earlier, longer call leaves behind
    cfg = GenerationConfig(
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        use_cache=True,
        cache_implementation=impl,
    )
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=cfg,
            logits_processor=LogitsProcessorList([stamp]),
            **kwargs,
        )
    if hasattr(model, "_previous_max_cache_length"):
        del model._previous_max_cache_length
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps), out[:, ids.shape[1] :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="smollm2-135m-instruct", help="a model spec, or 'tiny' (the tests' model)"
    )
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument(
        "--grown-by", type=float, default=4.0, help="static-grown: the earlier call's length ratio"
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the commit measured one)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    model, vocab = load(args.model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.rows, args.prompt_tokens), generator=g)
    need = args.prompt_tokens + args.new_tokens
    grown = round(need * args.grown_by)
    results: dict[str, Any] = {"args": vars(args), "cache_len": need, "grown_len": grown, "ms_per_step": {}}
    outputs = {}
    for cache in ("dynamic", "static", "static-grown"):
        best = float("inf")
        for _ in range(args.repeats):
            step, out = decode(model, ids, args.new_tokens, cache, grown)
            best = min(best, step)
        outputs[cache] = out
        results["ms_per_step"][cache] = round(best * 1000, 2)
        print(f"{cache:13s} {best * 1000:9.2f} ms per decode step", flush=True)
    same = outputs["dynamic"] == outputs["static"] == outputs["static-grown"]
    results["identical_tokens"] = same
    ms = results["ms_per_step"]
    print(
        f"dynamic / static: {ms['dynamic'] / ms['static']:.2f}x; static-grown / static: "
        f"{ms['static-grown'] / ms['static']:.2f}x; identical tokens: {same}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if not same:
        sys.exit("outputs differ between caches")


if __name__ == "__main__":
    main()
