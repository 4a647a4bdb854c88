"""A SQLite worker process of :class:`~matsql.sql.executor.Executor` (``python -m matsql.sql.worker``).

The parent starts it with one end of a socket pair and its own pid. The worker

- dies with its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux, so even a SIGKILLed
  parent leaves no worker behind; if the parent is already gone when that is set, it exits;
- ignores SIGINT (Ctrl-C goes to the parent, which stops its workers);
- runs tasks: a list of queries on one database, optionally judged against the first (gold)
  query, and sends one message per query as it finishes (the parent's per-query deadline
  restarts at each message and kills the worker when one overruns);
- sends summaries (digest, row count, preview), not rows, unless the parent asks for rows, and
  compares results here, so big results never cross the pipe.

It imports only the light sandbox modules (no pydantic, no sqlglot), so it starts in ~0.1 s.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from matsql.sql.compare import ex_match
from matsql.sql.execute import ConnectionCache, ExecResult, Limits, result_bytes, summarize

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)
    return ok


@dataclass(frozen=True)
class Task:
    """Queries on one database. With ``gold`` set, query 0 is the gold query and every other
    query's verdict (EX under ``mode``) is computed against it in the worker."""

    path: str
    ident: tuple[str, int, int, int]
    queries: tuple[str, ...]
    gold: bool = False
    mode: str = "bird"
    order_matters: bool = False
    keep_rows: bool = False


@dataclass
class WorkerState:
    limits: Limits
    conns: ConnectionCache
    gold_cache_bytes: int = 64 * 2**20
    _gold: OrderedDict[tuple[Any, str], ExecResult] = field(default_factory=OrderedDict)
    _gold_bytes: int = 0

    def gold_result(self, task: Task) -> ExecResult:
        key = (task.ident, task.queries[0])
        hit = self._gold.get(key)
        if hit is not None:
            self._gold.move_to_end(key)
            return hit
        res = self.conns.get(task.path, task.ident).execute(task.queries[0], self.limits)
        size = result_bytes(res)
        if size <= self.gold_cache_bytes:
            self._gold[key] = res
            self._gold_bytes += size
            while self._gold_bytes > self.gold_cache_bytes:
                _, old = self._gold.popitem(last=False)
                self._gold_bytes -= result_bytes(old)
        return res


def run_task(state: WorkerState, task: Task, emit) -> None:  # type: ignore[no-untyped-def]
    """Run a task, calling ``emit(kind, index, payload)``: ``("phase", i, None)`` when query i has
    executed (its post-processing starts), ``("res", i, (summary, verdict))`` when it is done."""
    gold: ExecResult | None = None
    for i, sql in enumerate(task.queries):
        if task.gold and i == 0:
            res = state.gold_result(task)
            gold = res
        else:
            res = state.conns.get(task.path, task.ident).execute(sql, state.limits)
        emit("phase", i, None)
        verdict: bool | None = None
        if task.gold and i > 0:
            verdict = bool(
                gold is not None
                and gold.ok
                and res.ok
                and ex_match(res.rows or [], gold.rows or [], task.mode, order_matters=task.order_matters)
            )
        emit("res", i, (summarize(res, keep_rows=task.keep_rows), verdict))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    fd, parent = int(args[0]), int(args[1])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        kind, limits, max_open, heap_limit, gold_cache_bytes = conn.recv()
        assert kind == "init"
        state = WorkerState(limits, ConnectionCache(max_open, heap_limit), gold_cache_bytes)
        conn.send(("ready", os.getpid()))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            _, task_id, task = msg

            def emit(kind: str, i: int, payload: Any, _id: int = task_id) -> None:
                conn.send((kind, _id, i, payload))

            try:
                run_task(state, task, emit)
            except Exception as e:  # a bug or MemoryError outside SQLite: report, keep serving
                conn.send(("fail", task_id, -1, f"{type(e).__name__}: {e}"))
            conn.send(("done", task_id, -1, None))
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    finally:
        os._exit(0)  # no atexit work: connections are read-only


if __name__ == "__main__":
    main()
