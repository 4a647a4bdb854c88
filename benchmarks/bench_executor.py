"""Speed of EX scoring for K candidates per question: matsql's Executor vs the official-script way.

For every runnable Spider dev question, K=8 candidate SQLs are built from the gold query by
deterministic perturbations (gold repeated, a re-rendered spelling of gold, a WHERE condition
dropped, LIMIT changed, ORDER direction swapped, columns reordered, DISTINCT added, a syntax
error), sampled with a seeded RNG so candidate sets have realistic duplicates. They are scored:

(a) naive, as BIRD's ``evaluation.py`` does it: per candidate a fresh ``sqlite3.connect``,
    execute the prediction and then the gold query again, ``set(pred) == set(gold)``;
(b) matsql's :class:`~matsql.sql.Executor`: worker pool, connections reused, results cached
    (gold and duplicate candidates run once), every query sandboxed and time-limited.

Verdicts must be identical (the script exits 1 otherwise). Times include the Executor's pool
start-up. Database files are read once before timing so both start with a warm page cache.
Goal: (b) >= 5x faster than (a) on a 2-core machine.

    python benchmarks/bench_executor.py [--limit N] [--workers W] [--k 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from matsql.sql import Executor

if TYPE_CHECKING:
    from sqlglot import exp

# sqlglot is imported inside the perturbation helpers, not here: Executor workers re-import the
# script's top level (multiprocessing's __main__ handling), and the harness's own imports should
# not be charged to the pool start-up.


def data_root() -> Path:
    return Path(os.environ.get("MATSQL_DATA", "../shared/data"))


def load_spider_dev() -> tuple[list[tuple[Path, str]], int]:
    """(database path, gold SQL) of runnable questions, and how many were skipped (missing DB)."""
    try:
        from matsql.benchmarks import load_benchmark  # the loader, when the package has it
    except ImportError:
        load_benchmark = None
    if load_benchmark is not None:
        bench = load_benchmark("spider-dev")
        return [(bench.db_path(q.db_id), q.gold_sql) for q in bench.runnable], len(bench.missing)
    base = data_root() / "spider"
    rows = json.loads((base / "dev.json").read_text(encoding="utf-8"))
    out, missing = [], 0
    for r in rows:
        db = base / "database" / r["db_id"] / f"{r['db_id']}.sqlite"
        if db.is_file():
            out.append((db, r["query"]))
        else:
            missing += 1
    return out, missing


# --- candidate perturbations (each returns None when it does not apply) ---------------------------


def _parse(sql: str) -> exp.Expression | None:
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        return sqlglot.parse_one(sql, read="sqlite")
    except SqlglotError:
        return None


def _render(tree: exp.Expression) -> str:
    return tree.sql(dialect="sqlite")


def drop_where_condition(tree: exp.Expression) -> str | None:
    from sqlglot import exp

    where = tree.find(exp.Where)
    if where is None:
        return None
    t = tree.copy()
    w = t.find(exp.Where)
    cond = w.this
    if isinstance(cond, exp.And):
        cond.replace(cond.left)  # keep the first conjunct
    else:
        w.pop()
    return _render(t)


def change_limit(tree: exp.Expression) -> str | None:
    from sqlglot import exp

    if not isinstance(tree, exp.Select):
        return None
    lim = tree.args.get("limit")
    n = int(lim.expression.name) + 1 if lim is not None and lim.expression.is_int else None
    return _render(tree.copy().limit(n if n is not None else 1))


def swap_order(tree: exp.Expression) -> str | None:
    from sqlglot import exp

    t = tree.copy()
    orders = list(t.find_all(exp.Ordered))
    if not orders:
        return None
    for o in orders:
        o.set("desc", not o.args.get("desc"))
    return _render(t)


def reorder_columns(tree: exp.Expression) -> str | None:
    from sqlglot import exp

    if not isinstance(tree, exp.Select) or len(tree.expressions) < 2:
        return None
    t = tree.copy()
    t.set("expressions", list(reversed(t.expressions)))
    return _render(t)


def add_distinct(tree: exp.Expression) -> str | None:
    from sqlglot import exp

    if not isinstance(tree, exp.Select) or tree.args.get("distinct"):
        return None
    return _render(tree.copy().distinct())


def syntax_error(sql: str) -> str:
    return "SELEC" + sql[6:] if sql.upper().startswith("SELECT") else sql + " FRM"


def candidates(gold: str, k: int, rng: random.Random) -> list[str]:
    """K samples from gold and its perturbations; gold has weight 3 (models often agree)."""
    from sqlglot.errors import SqlglotError

    pool: list[tuple[str, int]] = [(gold, 3), (syntax_error(gold), 1)]
    tree = _parse(gold)
    if tree is not None:
        pool.append((_render(tree), 1))
        for fn in (drop_where_condition, change_limit, swap_order, reorder_columns, add_distinct):
            try:
                sql = fn(tree)
            except (SqlglotError, ValueError, AttributeError):
                sql = None
            if sql is not None:
                pool.append((sql, 1))
    texts, weights = zip(*pool, strict=True)
    return rng.choices(texts, weights=weights, k=k)


# --- the two scorers ----------------------------------------------------------------------------


def naive_score(db: Path, pred: str, gold: str) -> bool:
    """BIRD evaluation.py execute_sql: fresh connection, prediction then gold, set equality."""
    try:
        conn = sqlite3.connect(db)
        try:
            cursor = conn.cursor()
            cursor.execute(pred)
            predicted_res = cursor.fetchall()
            cursor.execute(gold)
            ground_truth_res = cursor.fetchall()
            return set(predicted_res) == set(ground_truth_res)
        finally:
            conn.close()
    except Exception:
        return False


def time_executor(
    items: list[tuple[Path, str, str]], **kwargs: object
) -> tuple[float, float, list[bool], Executor]:
    """Wall time of a fresh Executor scoring everything (pool start-up included), start-up alone."""
    t0 = time.perf_counter()
    with Executor(**kwargs) as ex:  # type: ignore[arg-type]
        ex.run(items[0][0], "SELECT 1")  # starts the pool (if any); counted in the total
        t_start = time.perf_counter() - t0
        verdicts = ex.score_many(items, mode="bird")
    return time.perf_counter() - t0, t_start, verdicts, ex


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="first N runnable questions (0: all)")
    ap.add_argument("--workers", type=int, default=0, help="Executor worker processes (0: min(4, CPUs))")
    ap.add_argument("--k", type=int, default=8, help="candidates per question")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="report the fastest of this many runs")
    args = ap.parse_args()

    questions, n_missing = load_spider_dev()
    if args.limit:
        questions = questions[: args.limit]
    rng = random.Random(args.seed)
    items = [(db, cand, gold) for db, gold in questions for cand in candidates(gold, args.k, rng)]
    for db in {db for db, _ in questions}:
        db.read_bytes()  # warm the page cache for every scorer
    n_distinct = len({(db, sql) for db, p, g in items for sql in (p, g)})
    print(
        f"spider-dev: {len(questions)} questions ({n_missing} skipped: database missing), K={args.k}: "
        f"{len(items)} candidates, {len(items) * 2} executions naive, {n_distinct} distinct (db, SQL); "
        f"fastest of {args.repeats} runs, {os.cpu_count()} CPUs"
    )

    naive_times, pool_times, local_times, starts = [], [], [], []
    mismatches: set[int] = set()
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        naive = [naive_score(db, p, g) for db, p, g in items]
        naive_times.append(time.perf_counter() - t0)
        t_pool, t_start, pooled, ex = time_executor(items, workers=args.workers)
        pool_times.append(t_pool)
        starts.append(t_start)
        t_local, _, local, _ = time_executor(items, in_process=True)
        local_times.append(t_local)
        mismatches |= {
            i for i, (a, b, c) in enumerate(zip(naive, pooled, local, strict=True)) if not a == b == c
        }

    t_naive, t_pool, t_local = min(naive_times), min(pool_times), min(local_times)
    print(f"correct candidates: {sum(naive)} / {len(items)} ({100 * sum(naive) / max(len(items), 1):.1f}%)")
    print(f"(a) naive: fresh connection per candidate, gold re-run   {t_naive:7.2f} s")
    print(
        f"(b) Executor, {ex.workers} worker processes                    {t_pool:7.2f} s  "
        f"speed-up {t_naive / t_pool:5.2f}x  (first run, cold forkserver: {pool_times[0]:.2f} s, "
        f"{t_naive / pool_times[0]:.2f}x; pool start {starts[0]:.2f} s cold, {min(starts):.2f} s warm; "
        f"executed {ex.stats.executed}, cache hits {ex.stats.cache_hits})"
    )
    print(
        f"(c) Executor, in-process (reuse + cache, no pool)      {t_local:7.2f} s  speed-up {t_naive / t_local:5.2f}x"
    )
    print(f"identical verdicts (a) = (b) = (c): {not mismatches}")
    for i in sorted(mismatches)[:10]:
        db, p, g = items[i]
        print(
            f"  MISMATCH naive={naive[i]} pool={pooled[i]} local={local[i]} db={db.name}\n    pred: {p}\n    gold: {g}"
        )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
