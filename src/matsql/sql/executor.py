"""Many queries, fast and bounded: SQLite worker processes, connection reuse and a result cache.

Scoring K candidates per question the way the official scripts do (a fresh connection per
candidate, gold re-executed every time, one query at a time) repeats most of the work. Here:

- each worker keeps its sandboxed connections open (:class:`~matsql.sql.execute.ConnectionCache`),
  so a database file is opened and its schema parsed once per worker, not once per query;
- results are cached in the parent, keyed by (database identity = path, size, mtime, inode; SQL
  text), so the gold query and duplicate candidates run once; a changed file changes the key;
  the cache is bounded in bytes (LRU);
- every worker applies the same sandbox and limits as :func:`~matsql.sql.execute.run_sql`, so
  verdicts do not depend on how a query was run (tested).

Bounds that hold whatever the SQL does (issue 17):

- **time**: SQLite's progress handler stops a query at ``timeout_s`` between VM steps, but one
  slow built-in call is a single step. The parent therefore keeps a hard deadline per query
  (``timeout_s + grace_s``, restarted at each message a worker sends) and SIGKILLs a worker
  that overruns; the query is a "timeout", the worker is replaced, the rest of its task re-run;
- **memory**: rows are counted against the byte cap as they arrive; each worker has a SQLite
  heap limit; the parent samples resident memory every 20 ms and kills a worker past
  ``worker_max_rss``, or the largest busy worker while all workers together are past
  ``memory_budget`` (1 GiB by default); the query is an error; an idle worker left large by a
  big result is replaced; workers send digests, row counts and previews, not rows, unless
  ``keep_rows``; :meth:`Executor.judge_many` compares prediction and gold inside the worker;
- **processes**: workers are plain subprocesses (``python -m matsql.sql.worker``, no forkserver,
  no resource tracker) that die with the parent (``PR_SET_PDEATHSIG``), even after SIGKILL.

A worker that dies (segfault, OOM kill) loses only the query it was running (an error); the
others are re-run on a fresh worker. The cache keeps timeouts too (re-running would cost the
whole budget again).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from typing import Any

from matsql.sql.compare import spider_order_matters
from matsql.sql.execute import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_CELLS,
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    ConnectionCache,
    ExecResult,
    Limits,
    db_identity,
    result_bytes,
    summarize,
)
from matsql.sql.worker import Task, WorkerState, run_task

DbId = tuple[str, int, int, int]  # db_identity()

WORKER_HEAP_LIMIT = 384 * 2**20  # SQLite heap per worker
WORKER_MAX_RSS = 768 * 2**20  # resident memory per worker before the parent kills it
MEMORY_BUDGET = 2**30  # all workers together: past it, the largest busy worker is killed
WORKER_IDLE_RSS = 256 * 2**20  # an idle worker larger than this is replaced (its memory returns)
RSS_POLL_S = 0.02


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


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


def plan_db_chunks(dbs: Sequence[str], workers: int) -> list[list[int]]:
    """:func:`plan_chunks`, with every chunk cut where its database changes (a worker task runs
    on one database)."""
    out: list[list[int]] = []
    for chunk in plan_chunks(dbs, workers):
        current: list[int] = []
        for i in chunk:
            if current and dbs[current[-1]] != dbs[i]:
                out.append(current)
                current = []
            current.append(i)
        if current:
            out.append(current)
    return out


@dataclass
class ExecutorStats:
    requested: int = 0  # queries asked for
    cache_hits: int = 0  # answered from the cache (incl. duplicates within one call)
    executed: int = 0  # actually run on a database
    worker_crashes: int = 0  # workers that died on their own
    deadline_kills: int = 0  # workers killed because a query outran timeout_s + grace_s
    memory_kills: int = 0  # workers killed for passing worker_max_rss
    workers_started: int = 0


@dataclass(frozen=True)
class Judgement:
    """A prediction's execution, its gold's execution, and the EX verdict."""

    pred: ExecResult
    gold: ExecResult
    correct: bool


def results_match(pred: ExecResult, gold: ExecResult, mode: str = "bird", gold_sql: str = "") -> bool:
    """EX verdict of two executions: any failure (error or timeout) of either side is wrong, as in
    the official BIRD and Spider scripts. Without rows (worker summaries) the BIRD rule compares
    digests (equal digests <=> set-equal rows); the Spider rule needs rows (use ``judge_many``)."""
    from matsql.sql.compare import ex_match

    if not (pred.ok and gold.ok):
        return False
    if pred.rows is None or gold.rows is None:
        if mode == "bird":
            return pred.rows_digest() is not None and pred.rows_digest() == gold.rows_digest()
        raise ValueError("results_match: the spider rule needs rows; use Executor.judge_many")
    return ex_match(pred.rows, gold.rows, mode, order_matters=spider_order_matters(gold_sql))


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matsql-sqlite-spawner")
        return _SPAWNER


class _Worker:
    """One worker process and its end of the pipe (parent side)."""

    def __init__(self, init: tuple[Any, ...]) -> None:
        parent_end, child_end = Pipe(duplex=True)
        fd = child_end.fileno()
        # Started from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
        # forked the worker ends, so a worker started by a short-lived thread would die with it.
        self.proc = (
            _spawner()
            .submit(
                subprocess.Popen,
                [sys.executable, "-m", "matsql.sql.worker", str(fd), str(os.getpid())],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
            .result()
        )
        child_end.close()
        self.conn: Connection = parent_end
        self.conn.send(init)
        self.ready = False
        self.job: _Job | None = None
        self.clock = 0.0  # when the current query's deadline started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


@dataclass
class _Job:
    """A task in flight; ``slots[i]`` is where query i's (result, verdict) goes."""

    task: Task
    slots: list[int | None]  # None: a re-run gold query whose result is already known
    next: int = 0  # the query the worker is on


def _kill_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.kill()


class Executor:
    """Run many (database, SQL) pairs with the sandbox of ``run_sql``; a context manager.

    ``workers=0`` picks ``min(4, CPUs)`` processes; ``in_process=True`` runs in the calling
    process instead (no workers, hence no hard deadline or memory watchdog; the process-wide
    SQLite heap limit then applies to the caller). ``keep_rows=False`` makes results summaries
    (digest, row count, preview: what rollout records keep) so the parent never holds rows.
    ``cache_max_bytes`` bounds the memory the result cache holds (LRU eviction).
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
        keep_rows: bool = True,
        cache_max_bytes: int = 256 * 2**20,
        max_open_dbs: int = 16,
        grace_s: float = 0.5,
        worker_max_rss: int = WORKER_MAX_RSS,
        memory_budget: int | None = MEMORY_BUDGET,
        worker_heap_limit: int = WORKER_HEAP_LIMIT,
        gold_cache_bytes: int = 64 * 2**20,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = workers or default_workers()
        self.limits = Limits(timeout_s=timeout_s, max_rows=max_rows, max_cells=max_cells, max_bytes=max_bytes)
        self.in_process = in_process
        self.keep_rows = keep_rows
        self.grace_s = grace_s
        self.worker_max_rss = worker_max_rss
        self.memory_budget = memory_budget
        self.stats = ExecutorStats()
        self.bad_databases: dict[str, str] = {}  # path -> error, for corrupt / non-database files
        self._cache: OrderedDict[tuple[Any, ...], ExecResult] | None = OrderedDict() if cache else None
        self._verdicts: OrderedDict[tuple[Any, ...], bool] = OrderedDict()
        self._cache_bytes = 0
        self._cache_max_bytes = cache_max_bytes
        self._init = ("init", self.limits, max_open_dbs, worker_heap_limit, gold_cache_bytes)
        self._max_open = max_open_dbs
        self._gold_cache_bytes = gold_cache_bytes
        self._pool: list[_Worker] = []
        self._start_failures = 0
        self._local: WorkerState | None = None
        self._lock = threading.RLock()
        self._finalizer = weakref.finalize(self, _kill_all, self._pool)

    # -- public API --

    def run(self, db_path: str | Path, sql: str) -> ExecResult:
        return self.run_many([(db_path, sql)])[0]

    def run_many(self, items: Sequence[tuple[str | Path, str]]) -> list[ExecResult]:
        """Results in the order of ``items`` (rows included iff ``keep_rows``). Raises
        FileNotFoundError naming a missing database."""
        with self._lock:
            keys = self._keys([db for db, _ in items], [sql for _, sql in items])
            self.stats.requested += len(keys)
            return self._fetch(keys, self.keep_rows)

    def _fetch(self, keys: list[tuple[Any, ...]], keep_rows: bool) -> list[ExecResult]:
        if self._cache is None:  # no cache: every item runs, duplicates too
            chunks = plan_db_chunks([k[0][0] for k in keys], self.workers)
            tasks = [
                Task(keys[c[0]][0][0], keys[c[0]][0], tuple(keys[i][1] for i in c), keep_rows=keep_rows)
                for c in chunks
            ]
            flat: list[ExecResult | None] = [None] * len(keys)
            for c, task_res in zip(chunks, self._execute(tasks), strict=True):
                for i, (res, _) in zip(c, task_res, strict=True):
                    self._remember(keys[i], res)
                    flat[i] = res
            return flat  # type: ignore[return-value]
        out: list[ExecResult | None] = [None] * len(keys)
        todo: dict[tuple[Any, ...], list[int]] = {}
        for i, key in enumerate(keys):
            hit = self._recall(key, keep_rows)
            if hit is not None:
                out[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        self.stats.cache_hits += len(keys) - len(todo)
        order = list(todo)
        chunks = [[order[i] for i in c] for c in plan_db_chunks([k[0][0] for k in order], self.workers)]
        tasks = [Task(c[0][0][0], c[0][0], tuple(k[1] for k in c), keep_rows=keep_rows) for c in chunks]
        for chunk, task_res in zip(chunks, self._execute(tasks), strict=True):
            for key, (res, _) in zip(chunk, task_res, strict=True):
                self._remember(key, res)
                for i in todo[key]:
                    out[i] = res
        return out  # type: ignore[return-value]

    def judge_many(self, items: Sequence[tuple[str | Path, str, str]], mode: str = "bird") -> list[Judgement]:
        """EX of (database, predicted SQL, gold SQL) triples. Results come back as summaries
        (digest, row count, preview), never rows: the BIRD rule compares digests (equal digests
        <=> set-equal rows), the Spider rule is applied inside the workers."""
        if mode not in ("bird", "spider"):
            raise ValueError(f"unknown EX mode {mode!r}; expected bird or spider")
        with self._lock:
            n = len(items)
            keys = self._keys(
                [db for db, _, _ in items] * 2, [p for _, p, _ in items] + [g for _, _, g in items]
            )
            self.stats.requested += 2 * n
            if mode == "bird":
                res = self._fetch(keys, keep_rows=False)
                return [
                    Judgement(p, g, p.ok and g.ok and p.digest is not None and p.digest == g.digest)
                    for p, g in zip(res[:n], res[n:], strict=True)
                ]
            pred_res: list[ExecResult | None] = [self._recall(k, False) for k in keys[:n]]
            gold_res: list[ExecResult | None] = [self._recall(k, False) for k in keys[n:]]
            verdict: list[bool | None] = [None] * n
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, (_, _, gold_sql) in enumerate(items):
                vkey = (keys[i][0], keys[i][1], gold_sql, mode)
                p, g = pred_res[i], gold_res[i]
                if p is not None and g is not None:
                    if not (p.ok and g.ok):
                        verdict[i] = False
                    elif vkey in self._verdicts:
                        verdict[i] = self._verdicts[vkey]
                if verdict[i] is None:
                    groups.setdefault(keys[n + i], []).append(i)
            tasks: list[Task] = []
            members: list[list[list[int]]] = []  # per task, per query: the items it answers
            for gkey, idx in groups.items():
                preds: dict[str, list[int]] = {}
                for i in idx:
                    preds.setdefault(items[i][1], []).append(i)
                gold_sql = gkey[1]
                tasks.append(
                    Task(
                        gkey[0][0],
                        gkey[0],
                        (gold_sql, *preds),
                        gold=True,
                        mode=mode,
                        order_matters=mode == "spider" and spider_order_matters(gold_sql),
                    )
                )
                members.append([idx, *preds.values()])
            self.stats.cache_hits += 2 * n - sum(len(t.queries) for t in tasks)
            for task, mem, task_res in zip(tasks, members, self._execute(tasks), strict=True):
                (gres, _), *rest = task_res
                self._remember((task.ident, task.queries[0]), gres)
                for i in mem[0]:
                    gold_res[i] = gres
                for sql, who, (pres, v) in zip(task.queries[1:], mem[1:], rest, strict=True):
                    self._remember((task.ident, sql), pres)
                    ok = bool(v)
                    self._verdicts[(task.ident, sql, task.queries[0], mode)] = ok
                    while len(self._verdicts) > 1_000_000:
                        self._verdicts.popitem(last=False)
                    for i in who:
                        pred_res[i], verdict[i] = pres, ok
            return [
                Judgement(p, g, bool(v))
                for p, g, v in zip(pred_res, gold_res, verdict, strict=True)  # type: ignore[arg-type]
            ]

    def score(self, db_path: str | Path, pred_sql: str, gold_sql: str, mode: str = "bird") -> bool:
        return self.score_many([(db_path, pred_sql, gold_sql)], mode)[0]

    def score_many(self, items: Sequence[tuple[str | Path, str, str]], mode: str = "bird") -> list[bool]:
        """EX verdicts for (database, predicted SQL, gold SQL) triples; each distinct gold runs once
        per task, and rows are compared inside the workers."""
        return [j.correct for j in self.judge_many(items, mode)]

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._pool]

    def close(self) -> None:
        with self._lock:
            for w in self._pool:
                w.stop()
            self._pool.clear()
            if self._local is not None:
                self._local.conns.close()
                self._local = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cache --

    def _keys(self, dbs: Sequence[str | Path], sqls: Sequence[str]) -> list[tuple[Any, ...]]:
        idents: dict[str, DbId] = {}  # stat each database once per call
        keys = []
        for db, sql in zip(dbs, sqls, strict=True):
            name = os.fspath(db)
            ident = idents.get(name)
            if ident is None:
                ident = idents[name] = db_identity(name)
            keys.append((ident, sql))
        return keys

    def _remember(self, key: tuple[Any, ...], res: ExecResult) -> None:
        if res.bad_db:
            self.bad_databases.setdefault(key[0][0], res.error or "bad database")
        if self._cache is None:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= result_bytes(old)
        size = result_bytes(res)
        if size > self._cache_max_bytes:
            return
        self._cache[key] = res
        self._cache_bytes += size
        while self._cache_bytes > self._cache_max_bytes:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= result_bytes(old)

    def _recall(self, key: tuple[Any, ...], need_rows: bool) -> ExecResult | None:
        if self._cache is None:
            return None
        res = self._cache.get(key)
        if res is None:
            return None
        if need_rows and res.ok and res.rows is None:
            return None  # a summary cannot answer a call that wants rows
        self._cache.move_to_end(key)
        if not need_rows and res.rows is not None:
            return summarize(res, keep_rows=False)  # the digest from the rows, then no rows
        return res

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes

    # -- execution --

    def _execute(self, tasks: list[Task]) -> list[list[tuple[ExecResult, bool | None]]]:
        """Each task's (result, verdict) per query."""
        n_queries = sum(len(t.queries) for t in tasks)
        self.stats.executed += n_queries
        if not tasks:
            return []
        if self.in_process:
            if self._local is None:
                self._local = WorkerState(
                    self.limits, ConnectionCache(max_open=self._max_open), self._gold_cache_bytes
                )
            outs = []
            for t in tasks:
                got: list[tuple[ExecResult, bool | None]] = []

                def emit(kind: str, i: int, payload: Any, _got: list = got) -> None:
                    if kind == "res":
                        _got.append(payload)

                run_task(self._local, t, emit)
                outs.append(got)
            return outs
        return self._run_on_workers(tasks)

    def _spawn(self) -> _Worker:
        w = _Worker(self._init)
        self._pool.append(w)
        self.stats.workers_started += 1
        return w

    def _retire(self, w: _Worker) -> None:
        w.kill()
        self._pool.remove(w)

    def _run_on_workers(self, tasks: list[Task]) -> list[list[tuple[ExecResult, bool | None]]]:
        # flat slots: task t's query i lives at offset[t] + i
        offsets, total = [], 0
        for t in tasks:
            offsets.append(total)
            total += len(t.queries)
        slots: list[tuple[ExecResult, bool | None] | None] = [None] * total
        queue: list[_Job] = [
            _Job(t, list(range(off, off + len(t.queries)))) for t, off in zip(tasks, offsets, strict=True)
        ]
        queue.reverse()  # pop() from the end keeps the planned order
        while len(self._pool) < min(self.workers, len(queue)):
            self._spawn()
        budget = self.limits.timeout_s + self.grace_s
        next_rss = 0.0
        while queue or any(w.job is not None for w in self._pool):
            for w in self._pool:
                if w.ready and w.job is None and queue:
                    job = queue.pop()
                    w.job = job
                    w.clock = time.monotonic()
                    try:
                        w.conn.send(("task", id(job), job.task))
                    except OSError:
                        self._lost(w, queue, slots, "died")
                        break
            if queue and len(self._pool) < self.workers:
                self._spawn()
            busy = [w for w in self._pool if w.job is not None]
            now = time.monotonic()
            wait_s = min((w.clock + budget - now for w in busy), default=1.0)
            wait_s = max(0.0, min(wait_s, RSS_POLL_S if busy and self.worker_max_rss else wait_s))
            ready = wait([w.conn for w in self._pool], timeout=wait_s)
            by_conn = {id(w.conn): w for w in self._pool}
            for c in ready:
                w = by_conn.get(id(c))
                if w is None:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._lost(w, queue, slots, "died")
                    continue
                self._on_message(w, msg, slots)
            now = time.monotonic()
            for w in list(self._pool):
                if w.job is not None and now > w.clock + budget:
                    self._lost(w, queue, slots, "deadline")
            if (self.worker_max_rss or self.memory_budget) and now >= next_rss:
                next_rss = now + RSS_POLL_S
                self._watch_memory(queue, slots)
            while len(self._pool) < min(self.workers, len(queue)):
                self._spawn()
        out = []
        for t, off in zip(tasks, offsets, strict=True):
            out.append([slots[off + i] for i in range(len(t.queries))])  # type: ignore[misc]
        return out  # type: ignore[return-value]

    def _watch_memory(self, queue: list[_Job], slots: list[Any]) -> None:
        """Kill a busy worker past ``worker_max_rss``, and the largest busy one while the workers
        together pass ``memory_budget`` (an idle one is just replaced)."""
        rss = {id(w): _rss_bytes(w.pid) for w in self._pool}
        for w in list(self._pool):
            if w.job is not None and self.worker_max_rss and rss[id(w)] > self.worker_max_rss:
                self._lost(w, queue, slots, "memory", f"the worker passed {self.worker_max_rss // 2**20} MiB")
                rss.pop(id(w))
        if not self.memory_budget or not self._pool:
            return
        # workers only: the caller's own memory (a loaded model, say) is not ours to police
        total = sum(rss.get(id(w), 0) for w in self._pool)
        if total <= self.memory_budget:
            return
        busy = [w for w in self._pool if w.job is not None]
        if busy:
            w = max(busy, key=lambda x: rss.get(id(x), 0))
            self._lost(
                w,
                queue,
                slots,
                "memory",
                f"the SQLite workers passed their memory budget of {self.memory_budget // 2**20} MiB",
            )
        else:
            w = max(self._pool, key=lambda x: rss.get(id(x), 0))
            self._retire(w)
            self._spawn()

    def _on_message(self, w: _Worker, msg: tuple[Any, ...], slots: list[Any]) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self._start_failures = 0
            return
        job = w.job
        if job is None:
            return
        w.clock = time.monotonic()
        _, _, i, payload = msg
        if kind == "res":
            if job.slots[i] is not None:
                slots[job.slots[i]] = payload
            job.next = i + 1
        elif kind == "fail":
            for j in range(job.next, len(job.task.queries)):
                if job.slots[j] is not None:
                    slots[job.slots[j]] = (ExecResult("error", None, f"worker error: {payload}", 0.0), False)
            job.next = len(job.task.queries)
        elif kind == "done":
            w.job = None
            if _rss_bytes(w.pid) > WORKER_IDLE_RSS:  # a big result left it large: start afresh
                self._retire(w)
                self._spawn()

    def _lost(self, w: _Worker, queue: list[_Job], slots: list[Any], why: str, detail: str = "") -> None:
        """The worker is killed (deadline, memory) or died: its current query gets the verdict,
        the rest of its task goes back on the queue for a fresh worker."""
        job = w.job
        if not w.ready:
            self._start_failures += 1
            if self._start_failures >= 3:
                self._retire(w)
                raise RuntimeError(
                    f"SQLite worker processes fail to start ({sys.executable} -m matsql.sql.worker)"
                )
        self._retire(w)
        if len(self._pool) < self.workers:  # replace it now: it starts while others work
            self._spawn()
        if why == "deadline":
            self.stats.deadline_kills += 1
        elif why == "memory":
            self.stats.memory_kills += 1
        else:
            self.stats.worker_crashes += 1
        if job is None:
            return
        i = job.next
        if i >= len(job.task.queries):
            return
        t = self.limits.timeout_s
        res = {
            "deadline": ExecResult(
                "timeout",
                None,
                f"timeout after {t:g} s (worker killed at the hard deadline)",
                t + self.grace_s,
            ),
            "memory": ExecResult("error", None, f"result too large: {detail}", 0.0),
            "died": ExecResult("error", None, "the SQLite worker process died running this query", 0.0),
        }[why]
        if job.slots[i] is not None:
            slots[job.slots[i]] = (res, False)
        rest = list(range(i + 1, len(job.task.queries)))
        if not rest:
            return
        task = job.task
        if task.gold and i > 0:  # gold finished earlier but its rows died with the worker: re-run it
            keep = [0, *rest]
            queue.append(
                _Job(
                    replace(task, queries=tuple(task.queries[j] for j in keep)),
                    [None, *[job.slots[j] for j in rest]],
                )
            )
        elif task.gold:  # the gold query itself failed: every prediction is wrong, still run them
            queue.append(
                _Job(
                    replace(task, queries=tuple(task.queries[j] for j in rest), gold=False),
                    [job.slots[j] for j in rest],
                )
            )
        else:
            queue.append(
                _Job(
                    replace(task, queries=tuple(task.queries[j] for j in rest)), [job.slots[j] for j in rest]
                )
            )
