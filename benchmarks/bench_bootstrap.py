"""Speed of the paired bootstrap: vectorized vs the one-resample-per-iteration loop.

BIRD dev size (1534 questions), 10,000 resamples (the default). The loop runs fewer resamples
and is scaled up; both draw identical resamples for a seed (tests/test_statistics.py checks it).
Goal: the vectorized bootstrap, and a whole compare_arms (plain + cluster bootstrap, McNemar,
MDE), well under 1 s.

    python benchmarks/bench_bootstrap.py [--n 1534] [--resamples 10000] [--loop-resamples 1000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from matsql.evaluate.statistics import (
    bootstrap_indices,
    cluster_bootstrap,
    compare_arms,
    paired_bootstrap,
    paired_bootstrap_loop,
)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` runs (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1534, help="questions")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--loop-resamples", type=int, default=1_000, help="resamples for the slow loop")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    a = (rng.random(args.n) < 0.60).astype(float)
    b = (rng.random(args.n) < 0.58).astype(float)
    d = a - b
    dbs = [f"db{i % 11}" for i in range(args.n)]  # BIRD dev has 11 databases
    A = {f"q{i:05d}": float(x) for i, x in enumerate(a)}
    B = {f"q{i:05d}": float(x) for i, x in enumerate(b)}
    db_of = dict(zip(A, dbs, strict=True))

    # Same draws: the loop's first resamples equal the vectorized ones.
    k = min(args.loop_resamples, args.resamples)
    same = np.array_equal(
        paired_bootstrap(d, n_resamples=k, seed=1), paired_bootstrap_loop(d, n_resamples=k, seed=1)
    )

    t_vec = best_of(lambda: paired_bootstrap(d, n_resamples=args.resamples, seed=1), args.repeats)
    t_loop_part = best_of(lambda: paired_bootstrap_loop(d, n_resamples=args.loop_resamples, seed=1), 2)
    t_loop = t_loop_part * args.resamples / args.loop_resamples
    t_draw = best_of(
        lambda: [None for _ in bootstrap_indices(np.random.default_rng(1), args.n, args.resamples)],
        args.repeats,
    )
    t_clu = best_of(lambda: cluster_bootstrap(d, dbs, n_resamples=args.resamples, seed=1), args.repeats)
    t_cmp = best_of(
        lambda: compare_arms(A, B, db_of, n_resamples=args.resamples, seed=1), max(1, args.repeats // 2)
    )

    print(f"n={args.n} questions, {args.resamples} resamples (best of {args.repeats})")
    print(f"identical draws vectorized vs loop ({k} resamples): {same}")
    print(f"vectorized paired bootstrap : {t_vec:8.3f} s")
    print(
        f"loop paired bootstrap       : {t_loop:8.3f} s  "
        f"({t_loop_part:.3f} s for {args.loop_resamples} resamples, scaled)"
    )
    print(f"speed-up (loop / vectorized): {t_loop / t_vec:8.1f}x")
    print(f"  of which index draws alone: {t_draw:8.3f} s  (the floor for identical draws)")
    print(f"cluster bootstrap (11 dbs)  : {t_clu:8.3f} s")
    print(f"compare_arms (everything)   : {t_cmp:8.3f} s   goal < 1 s: {'met' if t_cmp < 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
