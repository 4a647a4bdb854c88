"""Write a benchmark's gold SQL as a prediction file (JSONL), to check the scorer end to end:
gold scored as predictions must get 100% EX on every runnable question.

    python scripts/gold_predictions.py spider-dev /tmp/gold.jsonl
    matsql eval-sql /tmp/gold.jsonl --benchmark spider-dev
"""

import json
import sys

from matsql.benchmarks import load_benchmark


def main(name: str, out: str) -> None:
    with open(out, "w", encoding="utf-8") as f:
        for q in load_benchmark(name).questions:
            f.write(json.dumps({"question_id": q.question_id, "sql": q.gold_sql}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
