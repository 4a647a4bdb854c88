"""How many questions of a rollout file a question selection also picks (e.g. whether label-time
questions were SFT questions). The selection is what `matsql rollout` would run on with the given
options; the rollout file is read with matsql's reader (plain or gzipped).

    python scripts/question_overlap.py results/study-spider/rollout-iter1.jsonl.gz \
        --benchmark spider-train --sample 600        # the study's SFT rollout: 128 of 128
"""

from __future__ import annotations

import argparse

from matsql.benchmarks import load_benchmark
from matsql.rollout.config import RolloutConfig
from matsql.rollout.io import read_records
from matsql.rollout.runner import select_questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rollout", help="a rollout file (JSONL, plain or .gz)")
    ap.add_argument("--benchmark", required=True)
    ap.add_argument("--sample", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--parts", default=None)
    ap.add_argument("--part", default=None)
    ap.add_argument("--parts-seed", type=int, default=0)
    args = ap.parse_args()
    cfg = RolloutConfig(
        benchmark=args.benchmark,
        sample=args.sample,
        seed=args.seed,
        limit=args.limit,
        parts=args.parts,
        part=args.part,
        parts_seed=args.parts_seed,
    )
    chosen = {q.question_id for q in select_questions(load_benchmark(args.benchmark).select("wrong"), cfg)}
    ids = {r.question_id for r in read_records(args.rollout)}
    print(f"{len(ids & chosen)} of the rollout's {len(ids)} questions are among the {len(chosen)} selected")


if __name__ == "__main__":
    main()
