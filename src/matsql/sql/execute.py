"""Sandboxed execution of untrusted (model-written) SQL on a SQLite benchmark database.

Model-written SQL must never change a benchmark file, hang a run or exhaust memory (DESIGN.md
"Safety"). Defence in depth, all in-process and thread-free:

- the file is opened read-only (``mode=ro`` URI; not ``immutable=1``, which would make SQLite
  ignore locks and concurrent writers), and ``PRAGMA query_only`` is switched on;
- an authorizer allows only what a SELECT needs (reading columns, calling functions, recursive
  CTEs) and denies everything else: writes, DDL, ATTACH/DETACH, every PRAGMA (including the
  table-valued ``pragma_*`` functions), transactions, VACUUM, ANALYZE; it also denies
  ``load_extension`` and other file-touching functions, and extension loading is disabled;
- a progress handler aborts the statement once a monotonic deadline has passed (no threads).
  It runs between VM steps, so one slow built-in call (``printf('%.*c', 2147483647, 'x')``,
  ``trim``/``replace``/``instr``/``LIKE`` on huge inputs) can outrun it: the hard deadline is the
  :class:`~matsql.sql.executor.Executor`'s, which kills and replaces a worker that overruns;
- result size is capped in rows, cells and text/blob bytes, counted row by row as rows arrive
  (one 60 MB row cannot hide in a batch); exceeding a cap is an *error*, not a truncation,
  because BIRD compares complete results and a truncated result could match gold by accident;
- SQLite's own limits bound one value's length and the SQL text length, and a process-wide
  ``hard_heap_limit`` bounds SQLite's heap.

Python's sqlite3 refuses a string with more than one statement ("You can only execute one
statement at a time") before the first one runs; a trailing ``;`` or comment is accepted, as
with the official BIRD script, which executes the prediction text unchanged. One deliberate
deviation: a text with no statement at all (empty or only comments) is an error here, where the
official script would compare an empty result.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "error", "timeout"]

DEFAULT_TIMEOUT_S = 30.0  # BIRD's official per-query budget
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_CELLS = 5_000_000
DEFAULT_MAX_BYTES = 128 * 2**20  # total text/blob bytes held in one result, counted row by row
MAX_VALUE_BYTES = 64 * 2**20  # SQLITE_LIMIT_LENGTH: one string/blob/row
MAX_SQL_BYTES = 1_000_000  # SQLITE_LIMIT_SQL_LENGTH
HEAP_LIMIT_BYTES = 2 * 2**30  # process-wide; PRAGMA hard_heap_limit can only lower it
PROGRESS_EVERY = 1000  # VM instructions between deadline checks (overhead is negligible)
DEADLINE_CHECK_ROWS = 256  # rows converted to Python between deadline checks
PREVIEW_ROWS = 5
MAX_CELL_CHARS = 40
# SQLite result codes of a file that is not a usable database (sqlite3.h)
_BAD_DB_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB

_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_DENIED_FUNCTIONS = frozenset(
    {"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit", "fts5", "sqlite_dbpage"}
)


@dataclass(frozen=True)
class Limits:
    """Resource bounds for one query. Exceeding any of them makes the result an error/timeout."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_rows: int = DEFAULT_MAX_ROWS
    max_cells: int = DEFAULT_MAX_CELLS
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one query. ``rows`` is None unless status is "ok"; callers must not mutate it
    (results are shared through caches)."""

    status: Status
    rows: list[tuple[Any, ...]] | None
    error: str | None
    elapsed_s: float
    columns: tuple[str, ...] | None = None
    # A summary that stands in for the rows (filled by :func:`summarize`; the Executor's workers
    # send summaries, so the parent holds digests, not rows, unless it asks for rows).
    digest: str | None = None  # rows_digest: equal digests <=> BIRD set-equal results
    n_rows: int | None = None
    preview: str | None = None  # the first rows rendered for prompts
    bad_db: bool = False  # the database file is corrupt or not a database (a harness problem)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def row_count(self) -> int | None:
        return len(self.rows) if self.rows is not None else self.n_rows

    def rows_digest(self) -> str | None:
        """The BIRD digest of the rows (computed from the rows when no summary holds it)."""
        if self.digest is not None or self.rows is None:
            return self.digest
        from matsql.sql.compare import rows_digest

        return rows_digest(self.rows)


def _cell(v: Any) -> str:
    if v is None:
        text = "NULL"
    elif isinstance(v, bytes):
        text = f"<blob {len(v)} bytes>"
    elif isinstance(v, float):
        text = repr(v)
    else:
        text = str(v)
    text = " ".join(text.split())  # one line per row, whatever the data holds
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def render_preview(
    columns: Sequence[str] | None, rows: Sequence[Sequence[Any]], preview_rows: int = PREVIEW_ROWS
) -> str:
    """A compact ``a | b`` text table of the first rows, with the total row count."""
    lines = []
    if columns:
        lines.append(" | ".join(_cell(c) for c in columns))
    lines.extend(" | ".join(_cell(v) for v in row) for row in rows[:preview_rows])
    n = len(rows)
    if n == 0:
        lines.append("(0 rows)")
    elif n > preview_rows:
        lines.append(f"... ({n} rows, first {preview_rows} shown)")
    else:
        lines.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(lines)


def summarize(result: ExecResult, keep_rows: bool = False) -> ExecResult:
    """The result with its digest, row count and preview filled in; rows dropped unless kept."""
    if result.status != "ok" or result.rows is None:
        return result
    from matsql.sql.compare import rows_digest

    return replace(
        result,
        rows=result.rows if keep_rows else None,
        # with the rows kept, the digest is computed where it is needed (ExecResult.rows_digest)
        digest=result.digest or (None if keep_rows else rows_digest(result.rows)),
        n_rows=len(result.rows),
        preview=render_preview(result.columns, result.rows),
    )


def result_bytes(result: ExecResult) -> int:
    """Approximate memory a result holds (rows, summary): what result caches are bounded by."""
    n = 256 + len(result.preview or "") + len(result.error or "")
    for row in result.rows or ():
        n += 56 + 8 * len(row)
        for v in row:
            n += len(v) + 48 if type(v) is str or type(v) is bytes else 24
    return n


class _Deadline:
    """Progress-handler callable: non-zero return makes SQLite abort with "interrupted"."""

    __slots__ = ("at", "fired")

    def __init__(self) -> None:
        self.at = float("inf")
        self.fired = False

    def __call__(self) -> int:
        if time.monotonic() > self.at:
            self.fired = True
            return 1
        return 0


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


class SandboxedConnection:
    """A read-only, authorizer-guarded connection that can run many queries (connection reuse
    avoids re-opening the file and re-parsing the schema for every query)."""

    def __init__(self, db_path: str | Path, *, heap_limit_bytes: int | None = HEAP_LIMIT_BYTES) -> None:
        path = Path(db_path)
        if not path.is_file():
            raise FileNotFoundError(f"database not found: {path}")
        self.path = path
        conn = sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            if hasattr(conn, "enable_load_extension"):
                conn.enable_load_extension(False)
            # Pragmas go in before the authorizer, which denies every PRAGMA afterwards.
            conn.execute("PRAGMA query_only = ON")
            if heap_limit_bytes:
                conn.execute(f"PRAGMA hard_heap_limit = {int(heap_limit_bytes)}")
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
            conn.set_authorizer(_authorize)
            self._deadline = _Deadline()
            conn.set_progress_handler(self._deadline, PROGRESS_EVERY)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def execute(self, sql: str, limits: Limits = Limits()) -> ExecResult:
        start = time.monotonic()
        self._deadline.at = start + limits.timeout_s
        self._deadline.fired = False
        cur: sqlite3.Cursor | None = None
        try:
            if not sql.strip():
                return _error("empty SQL: no statement to execute", start)
            cur = self._conn.execute(sql)
            if cur.description is None:
                return _error("no result columns: the text holds no statement, or not a query", start)
            columns = tuple(d[0] for d in cur.description)
            rows, problem = _fetch_bounded(cur, limits, len(columns), self._deadline)
            if problem == "timeout":
                return _timeout(limits, start)
            if problem is not None:
                return _error(problem, start)
            return ExecResult("ok", rows, None, time.monotonic() - start, columns)
        except (sqlite3.Error, sqlite3.Warning) as e:
            if self._deadline.fired:
                return _timeout(limits, start)
            msg = str(e) or type(e).__name__
            if getattr(e, "sqlite_errorcode", None) in _BAD_DB_CODES:
                return ExecResult(
                    "error", None, f"bad database {self.path}: {msg}", time.monotonic() - start, bad_db=True
                )
            if msg in ("not authorized", "authorization denied"):
                msg += " (read-only sandbox: only a single SELECT statement is allowed)"
            return _error(msg, start)
        except MemoryError:
            return _error("out of memory (SQLite heap limit reached)", start)
        except (OverflowError, ValueError) as e:  # e.g. an integer too large for SQLite, NUL in text
            return _error(f"{type(e).__name__}: {e}", start)
        finally:
            self._deadline.at = float("inf")
            if cur is not None:
                cur.close()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SandboxedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fetch_bounded(
    cur: sqlite3.Cursor, limits: Limits, n_cols: int, deadline: _Deadline
) -> tuple[list[tuple[Any, ...]], str | None]:
    """Rows one at a time, each counted against the caps as it arrives (a batch of huge rows
    would be held before any check)."""
    rows: list[tuple[Any, ...]] = []
    n_bytes = 0
    max_rows = min(limits.max_rows, limits.max_cells // max(n_cols, 1))
    max_bytes = limits.max_bytes
    check_at = DEADLINE_CHECK_ROWS
    for row in cur:
        for v in row:
            if type(v) is str or type(v) is bytes:
                n_bytes += len(v)
        if n_bytes > max_bytes:
            return [], f"result too large: more than {max_bytes} bytes of text/blob"
        rows.append(row)
        if len(rows) > max_rows:
            cap = "rows" if max_rows == limits.max_rows else "cells"
            return [], f"result too large: more than {max_rows} rows (cap on {cap}; BIRD needs full results)"
        if len(rows) >= check_at:
            check_at += DEADLINE_CHECK_ROWS
            if deadline():  # Python-side conversion time counts too
                return [], "timeout"
    return rows, None


def _error(msg: str, start: float) -> ExecResult:
    return ExecResult("error", None, msg, time.monotonic() - start)


def _timeout(limits: Limits, start: float) -> ExecResult:
    return ExecResult("timeout", None, f"timeout after {limits.timeout_s:g} s", time.monotonic() - start)


def run_sql(
    db_path: str | Path,
    sql: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_cells: int = DEFAULT_MAX_CELLS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ExecResult:
    """Run one SQL text on a fresh sandboxed connection. Raises FileNotFoundError for a missing
    database (a harness problem, not a wrong query: callers count missing databases)."""
    limits = Limits(timeout_s=timeout_s, max_rows=max_rows, max_cells=max_cells, max_bytes=max_bytes)
    with SandboxedConnection(db_path) as conn:
        return conn.execute(sql, limits)


@dataclass
class ConnectionCache:
    """Open sandboxed connections keyed by database identity (path, size, mtime, inode), so a
    file replaced on disk is reopened instead of read through a stale handle. Bounded LRU."""

    max_open: int = 64
    heap_limit_bytes: int | None = HEAP_LIMIT_BYTES
    _conns: dict[tuple[Any, ...], SandboxedConnection] = field(default_factory=dict)

    def get(
        self, db_path: str | Path, identity: tuple[str, int, int, int] | None = None
    ) -> SandboxedConnection:
        key = identity or db_identity(db_path)
        conn = self._conns.pop(key, None)
        if conn is None:
            conn = SandboxedConnection(db_path, heap_limit_bytes=self.heap_limit_bytes)
            while len(self._conns) >= self.max_open:
                self._conns.pop(next(iter(self._conns))).close()
        self._conns[key] = conn  # most recently used last
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def db_identity(db_path: str | Path) -> tuple[str, int, int, int]:
    """(resolved path, size, mtime_ns, inode): changes whenever the file's content may have."""
    path = Path(db_path).resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"database not found: {db_path}") from None
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
