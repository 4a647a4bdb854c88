"""``matsql data check``: what a benchmark folder holds and whether its gold SQL runs.

``summarize`` is pure (benchmark + gold execution results -> report); the command runs the gold
queries through the sandboxed ``matsql.sql.Executor`` (read-only, time-bounded) and prints it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from matsql.benchmarks.base import Benchmark
from matsql.sql import ExecResult, Executor

DIFFICULTY_ORDER = ("simple", "moderate", "challenging", "easy", "medium", "hard", "extra", "unknown")


@dataclass
class DifficultyCounts:
    questions: int = 0
    runnable: int = 0
    gold_ok: int = 0


@dataclass
class CheckReport:
    benchmark: str
    root: str
    db_dir: str
    difficulty_source: str
    questions: int
    runnable: int
    missing: int
    missing_dbs: dict[str, int]  # absent database -> questions needing it
    distinct_dbs: int
    present_dbs: int
    gold_checked: bool
    gold_ok: int = 0
    gold_empty: int = 0  # ran, but returned no rows (legal, yet worth knowing)
    gold_failed: list[dict[str, Any]] = field(default_factory=list)  # question_id, db_id, status, error
    by_difficulty: dict[str, DifficultyCounts] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _difficulty_key(name: str) -> tuple[int, str]:
    return (DIFFICULTY_ORDER.index(name) if name in DIFFICULTY_ORDER else len(DIFFICULTY_ORDER), name)


def summarize(bench: Benchmark, gold: Sequence[ExecResult] | None) -> CheckReport:
    """Report for ``bench``; ``gold`` holds one result per runnable question (None: not run)."""
    runnable = bench.runnable
    if gold is not None and len(gold) != len(runnable):
        raise ValueError(f"{len(gold)} gold results for {len(runnable)} runnable questions")
    dbs = bench.db_ids
    report = CheckReport(
        benchmark=bench.name,
        root=str(bench.root or ""),
        db_dir=str(bench.db_dir),
        difficulty_source=bench.difficulty_source,
        questions=len(bench.questions),
        runnable=len(runnable),
        missing=len(bench.questions) - len(runnable),
        missing_dbs=bench.missing_dbs,
        distinct_dbs=len(dbs),
        present_dbs=sum(bench.has_db(d) for d in dbs),
        gold_checked=gold is not None,
    )
    counts: dict[str, DifficultyCounts] = {}
    for q in bench.questions:
        counts.setdefault(q.difficulty, DifficultyCounts()).questions += 1
    ok_by: Counter[str] = Counter()
    for q, res in zip(runnable, gold or [None] * len(runnable), strict=True):
        counts[q.difficulty].runnable += 1
        if res is None:
            continue
        if res.ok:
            report.gold_ok += 1
            report.gold_empty += not res.rows
            ok_by[q.difficulty] += 1
        else:
            report.gold_failed.append(
                {"question_id": q.question_id, "db_id": q.db_id, "status": res.status, "error": res.error}
            )
    for d, c in counts.items():
        c.gold_ok = ok_by[d]
    report.by_difficulty = {d: counts[d] for d in sorted(counts, key=_difficulty_key)}
    return report


def run_gold(bench: Benchmark, *, timeout_s: float = 30.0, workers: int = 0) -> list[ExecResult]:
    """Execute the gold SQL of every runnable question (sandboxed, read-only, cached per DB)."""
    with Executor(workers=workers, timeout_s=timeout_s) as ex:
        return ex.run_many([(bench.db_path(q.db_id), q.gold_sql) for q in bench.runnable])
