"""First load of a GGUF model (dequantize, no cache): how many times the file is parsed, and the
wall time, with ``matsql.models.loading.one_gguf_parse`` and without it, side by side.

transformers' ``load_gguf_checkpoint`` makes a new ``gguf.GGUFReader`` for the config, the
tokenizer and the weights, and each reader decodes every vocabulary entry; ``one_gguf_parse``
shares the first. Each setting runs in a fresh process with an empty cache, ``--repeats`` times
alternately; the best time of each is reported.

    python benchmarks/bench_gguf_load.py                                   # SmolLM2-135M (CPU)
    python benchmarks/bench_gguf_load.py --model qwen2.5-coder-0.5b-instruct --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from matsql.evaluate.portable import portable_text

CHILD = r"""
import contextlib, json, os, sys, time
import gguf, torch
from matsql.models import loading, resolve_model
if sys.argv[2] == "without":
    loading.one_gguf_parse = contextlib.nullcontext  # every transformers call makes its own reader
parses = []
real = gguf.GGUFReader
def counting(path, mode="r"):
    parses.append(str(path))
    return real(path, mode)
gguf.GGUFReader = counting
t0 = time.perf_counter()
loading._load_gguf(resolve_model(sys.argv[1]), torch.float32)
print(json.dumps({"parses": len(parses), "seconds": time.perf_counter() - t0}))
"""


def run(model: str, setting: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="gguf-load-") as cache:
        env = {**os.environ, "MATSQL_CACHE": cache}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, model, setting], env=env, capture_output=True, text=True, check=True
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    res: dict[str, list[dict]] = {"with": [], "without": []}
    for _ in range(args.repeats):
        for setting in ("without", "with"):
            res[setting].append(run(args.model, setting))
    best = {k: min(r["seconds"] for r in v) for k, v in res.items()}
    out = {
        "model": args.model,
        "runs": res,
        "parses": {k: v[0]["parses"] for k, v in res.items()},
        "best_seconds": best,
        "speedup": best["without"] / best["with"],
    }
    print(
        f"{args.model}, first load (dequantize, empty cache): without one_gguf_parse "
        f"{out['parses']['without']} parses, {best['without']:.1f} s; with it {out['parses']['with']} "
        f"parse(s), {best['with']:.1f} s ({out['speedup']:.2f}x, best of {args.repeats})"
    )
    if args.json:
        args.json.write_text(portable_text(json.dumps(out, indent=1)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
