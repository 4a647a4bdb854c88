"""Many queries, fast: a process pool of sandboxed SQLite workers, connection reuse and a result cache.

Scoring K candidates per question the way the official scripts do (a fresh connection per
candidate, gold re-executed every time, one query at a time) repeats most of the work. Here:

- each worker keeps its sandboxed connections open (:class:`~matsql.sql.execute.ConnectionCache`),
  so a database file is opened and its schema parsed once per worker, not once per query;
- results are cached in the parent, keyed by (database identity = path, size, mtime, inode; SQL
  text), so the gold query and duplicate candidates run once; a changed file changes the key;
- distinct uncached queries are sent in chunks grouped by database to ``workers`` processes;
- every worker applies the same sandbox and limits as :func:`~matsql.sql.execute.run_sql`, so
  verdicts do not depend on how a query was run (tested).

Workers start through ``forkserver`` (safe when the parent has threads, e.g. torch). As with any
non-fork start method, each worker re-imports the parent's ``__main__`` module (CPython 3.11's
forkserver cannot preload it), so a script that creates an Executor needs an
``if __name__ == "__main__":`` guard, and a heavy top level (e.g. a CLI importing scipy) slows
every worker's start.

A worker that dies (segfault, OOM kill) breaks the pool; the executor restarts it and re-runs the
unfinished queries one by one, so only the query that kills a worker is lost (reported as an
error). Timeouts are enforced inside the workers by SQLite's progress handler, which runs between
VM instructions: a single long instruction (e.g. one huge sort step) finishes before the deadline
is checked. The cache keeps timeouts too (re-running would cost the whole budget again).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsql.sql.compare import ex_match, spider_order_matters
from matsql.sql.execute import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CELLS,
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    ConnectionCache,
    ExecResult,
    Limits,
    db_identity,
)

DbId = tuple[str, int, int, int]  # db_identity()
Task = tuple[str, DbId, str]  # (path, identity, sql)


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


# --- worker side ------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(limits: Limits, max_open: int) -> None:
    _STATE["limits"] = limits
    _STATE["conns"] = ConnectionCache(max_open=max_open)


def _run_task(conns: ConnectionCache, limits: Limits, task: Task) -> ExecResult:
    path, ident, sql = task
    return conns.get(path, ident).execute(sql, limits)


def run_chunk(tasks: list[Task]) -> list[ExecResult]:
    """Worker entry point: run tasks on this process's cached connections."""
    return [_run_task(_STATE["conns"], _STATE["limits"], t) for t in tasks]


# --- parent side ------------------------------------------------------------------------------


def plan_chunks(db_of_task: Sequence[str], workers: int, max_chunk: int = 64) -> list[list[int]]:
    """Task indices in chunks for the pool: about 4 chunks per worker (load balance), and a
    database's tasks kept in one chunk where its share allows (each worker opening and parsing
    the schema of every database would cost more than the queries on small databases)."""
    target = max(1, min(max_chunk, math.ceil(len(db_of_task) / (workers * 4))))
    by_db: dict[str, list[int]] = {}
    for i, db in enumerate(db_of_task):
        by_db.setdefault(db, []).append(i)
    chunks: list[list[int]] = []
    current: list[int] = []
    for group in by_db.values():
        for start in range(0, len(group), target):
            part = group[start : start + target]
            if current and len(current) + len(part) > target:
                chunks.append(current)
                current = []
            current = current + part
    if current:
        chunks.append(current)
    return chunks


@dataclass
class ExecutorStats:
    requested: int = 0  # queries asked for
    cache_hits: int = 0  # answered from the cache (incl. duplicates within one call)
    executed: int = 0  # actually run on a database
    worker_crashes: int = 0


def results_match(pred: ExecResult, gold: ExecResult, mode: str = "bird", gold_sql: str = "") -> bool:
    """EX verdict of two executions: any failure (error or timeout) of either side is wrong, as in
    the official BIRD and Spider scripts."""
    if not (pred.ok and gold.ok):
        return False
    assert pred.rows is not None and gold.rows is not None
    return ex_match(pred.rows, gold.rows, mode, order_matters=spider_order_matters(gold_sql))


class Executor:
    """Run many (database, SQL) pairs with the sandbox of ``run_sql``; a context manager.

    ``workers=0`` picks ``min(4, CPUs)`` processes; ``in_process=True`` runs in the calling
    process instead (no pool; the process-wide SQLite heap limit then applies to the caller).
    ``cache_max_cells`` bounds the memory the result cache holds (LRU eviction).
    """

    def __init__(
        self,
        workers: int = 0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cache: bool = True,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_cells: int = DEFAULT_MAX_CELLS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        in_process: bool = False,
        cache_max_cells: int = 20_000_000,
        max_open_dbs: int = 64,
        chunk_fn: Callable[[list[Task]], list[ExecResult]] = run_chunk,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers or default_workers()
        self.limits = Limits(timeout_s=timeout_s, max_rows=max_rows, max_cells=max_cells, max_bytes=max_bytes)
        self.in_process = in_process
        self.stats = ExecutorStats()
        self._cache: OrderedDict[tuple[DbId, str], ExecResult] | None = OrderedDict() if cache else None
        self._cache_cells = 0
        self._cache_max_cells = cache_max_cells
        self._max_open = max_open_dbs
        self._chunk_fn = chunk_fn
        self._pool: ProcessPoolExecutor | None = None
        self._local: ConnectionCache | None = None

    # -- public API --

    def run(self, db_path: str | Path, sql: str) -> ExecResult:
        return self.run_many([(db_path, sql)])[0]

    def run_many(self, items: Sequence[tuple[str | Path, str]]) -> list[ExecResult]:
        """Results in the order of ``items``. Raises FileNotFoundError naming a missing database."""
        idents: dict[str, DbId] = {}  # stat each database once per call
        keys: list[tuple[DbId, str]] = []
        for db, sql in items:
            name = os.fspath(db)
            ident = idents.get(name)
            if ident is None:
                ident = idents[name] = db_identity(name)
            keys.append((ident, sql))
        self.stats.requested += len(keys)

        if self._cache is None:
            self.stats.executed += len(keys)
            return self._execute(keys)
        hits = {k: self._recall(k) for k in keys if k in self._cache}  # before new entries evict them
        todo = list(dict.fromkeys(k for k in keys if k not in hits))
        fresh = dict(zip(todo, self._execute(todo), strict=True))
        for k, res in fresh.items():
            self._remember(k, res)
        self.stats.executed += len(todo)
        self.stats.cache_hits += len(keys) - len(todo)
        return [hits[k] if k in hits else fresh[k] for k in keys]

    def score(self, db_path: str | Path, pred_sql: str, gold_sql: str, mode: str = "bird") -> bool:
        return self.score_many([(db_path, pred_sql, gold_sql)], mode)[0]

    def score_many(self, items: Sequence[tuple[str | Path, str, str]], mode: str = "bird") -> list[bool]:
        """EX verdicts for (database, predicted SQL, gold SQL) triples; each distinct gold runs once."""
        n = len(items)
        res = self.run_many([(db, p) for db, p, _ in items] + [(db, g) for db, _, g in items])
        return [results_match(res[i], res[n + i], mode, items[i][2]) for i in range(n)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cache --

    @staticmethod
    def _cells(res: ExecResult) -> int:
        return 1 + (len(res.rows) * len(res.columns or ()) if res.rows is not None else 0)

    def _remember(self, key: tuple[DbId, str], res: ExecResult) -> None:
        assert self._cache is not None
        cells = self._cells(res)
        if cells > self._cache_max_cells:
            return
        self._cache[key] = res
        self._cache_cells += cells
        while self._cache_cells > self._cache_max_cells:
            _, old = self._cache.popitem(last=False)
            self._cache_cells -= self._cells(old)

    def _recall(self, key: tuple[DbId, str]) -> ExecResult:
        assert self._cache is not None
        self._cache.move_to_end(key)
        return self._cache[key]

    # -- execution --

    def _execute(self, keys: list[tuple[DbId, str]]) -> list[ExecResult]:
        tasks: list[Task] = [(ident[0], ident, sql) for ident, sql in keys]
        if not tasks:
            return []
        if self.in_process:
            if self._local is None:
                self._local = ConnectionCache(max_open=self._max_open)
            return [_run_task(self._local, self.limits, t) for t in tasks]
        chunks = plan_chunks([t[0] for t in tasks], self.workers)
        results: list[ExecResult | None] = [None] * len(tasks)
        try:
            pool = self._get_pool()
            for idx, chunk_res in zip(
                chunks, pool.map(self._chunk_fn, [[tasks[i] for i in c] for c in chunks]), strict=True
            ):
                for i, r in zip(idx, chunk_res, strict=True):
                    results[i] = r
        except BrokenProcessPool:
            self._on_crash()
            for i, t in enumerate(tasks):  # isolate the query that kills a worker
                if results[i] is None:
                    results[i] = self._run_isolated(t)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _run_isolated(self, task: Task) -> ExecResult:
        try:
            return self._get_pool().submit(self._chunk_fn, [task]).result()[0]
        except BrokenProcessPool:
            self._on_crash()
            return ExecResult("error", None, "the SQLite worker process died running this query", 0.0)

    def _on_crash(self) -> None:
        self.stats.worker_crashes += 1
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])  # workers fork with this module loaded
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.limits, self._max_open),
            )
        return self._pool
