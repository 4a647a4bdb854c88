"""pass@K of rollouts of the same questions, and per pair of ways the questions that only one
of them solves, with an exact binomial (McNemar) p: do two generation ways (LoRA per request,
swapped in, served) sample equally well? Used on `vllm_checks.sh`'s lora stages.

    python scripts/device/pass_agreement.py request=lora_request-1.jsonl.gz swap=lora_swap-1.jsonl.gz \
        served=served-1.jsonl.gz [--against request]
"""

from __future__ import annotations

import argparse

import numpy as np

from matsql.evaluate.statistics import mcnemar_exact
from matsql.rollout.io import read_records


def solved(path: str) -> dict[str, bool]:
    """Question id -> any candidate correct."""
    return {r.question.question_id: any(c.correct for c in r.candidates) for r in read_records(path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ways", nargs="+", help="NAME=ROLLOUT (repeat NAME over runs to pool them: NAME=a,b)")
    ap.add_argument(
        "--against", default=None, help="the way the others are compared with (default: the first)"
    )
    args = ap.parse_args()
    ways: dict[str, list[dict[str, bool]]] = {}
    for w in args.ways:
        name, paths = w.split("=", 1)
        ways[name] = [solved(p) for p in paths.split(",")]
    ref = args.against or next(iter(ways))
    for name, runs in ways.items():
        n = sum(len(r) for r in runs)
        print(f"{name:10s} pass@K {100 * sum(sum(r.values()) for r in runs) / n:6.2f} over {n} question(s)")
    for name, runs in ways.items():
        if name == ref:
            continue
        a: list[bool] = []
        b: list[bool] = []
        for ra, rb in zip(ways[ref], runs, strict=True):
            if ra.keys() != rb.keys():
                raise SystemExit(f"{ref} and {name}: not the same questions")
            a += [ra[q] for q in ra]
            b += [rb[q] for q in ra]
        m = mcnemar_exact(np.array(a), np.array(b))  # b: solved by ref only, c: by this way only
        print(f"{ref} vs {name}: solved by {ref} only {m.b}, by {name} only {m.c}, exact p {m.p_value:.4f}")


if __name__ == "__main__":
    main()
