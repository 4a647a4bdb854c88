"""Sandboxed execution: hostile SQL is refused or bounded, and no database file ever changes."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from matsql.sql import ExecResult, Limits, SandboxedConnection, run_sql

FIXTURES = Path(__file__).parent / "fixtures" / "sql"
HOSTILE = yaml.safe_load((FIXTURES / "hostile.yaml").read_text())


def make_db(path: Path, setup_sql: str) -> Path:
    """Create a SQLite file from a script (rollback journal, closed cleanly: no side files)."""
    conn = sqlite3.connect(path)
    conn.executescript(setup_sql)
    conn.commit()
    conn.close()
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every file in a folder (a new or changed file shows up)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    return make_db(folder / "db.sqlite", HOSTILE["setup"])


@pytest.mark.parametrize("case", HOSTILE["cases"], ids=lambda c: c["sql"][:50] or "<empty>")
def test_hostile_sql_is_refused_or_bounded(case: dict, hostile_db: Path) -> None:
    folder = hostile_db.parent
    before = tree_digest(folder)
    sql = case["sql"].replace("{tmp}", str(folder))
    start = time.monotonic()
    res = run_sql(hostile_db, sql, timeout_s=case.get("timeout_s", 0.5), max_rows=20_000)
    elapsed = time.monotonic() - start

    assert res.status == case["status"], res
    if res.status == "ok":
        assert res.rows == [tuple(r) for r in case["rows"]]
    else:
        assert res.rows is None
        assert case["error"].lower() in (res.error or "").lower()
    assert elapsed < 5.0  # bounded: by the deadline or the row cap (20k rows)
    assert tree_digest(folder) == before  # same bytes, and no -journal/-wal/-shm/copy file


def test_hostile_suite_leaves_a_reused_connection_usable(hostile_db: Path) -> None:
    """Connection reuse must not carry a refused statement's state into the next query."""
    before = tree_digest(hostile_db.parent)
    with SandboxedConnection(hostile_db) as conn:
        for case in HOSTILE["cases"]:
            limits = Limits(timeout_s=case.get("timeout_s", 0.5), max_rows=20_000)
            res = conn.execute(case["sql"].replace("{tmp}", str(hostile_db.parent)), limits)
            assert res.status == case["status"]
            after = conn.execute("SELECT count(*), max(b) FROM t", limits)
            assert after.status == "ok" and after.rows == [(200, "v99")]
    assert tree_digest(hostile_db.parent) == before


def test_select_returns_rows_and_columns(hostile_db: Path) -> None:
    res = run_sql(hostile_db, "SELECT a, b AS label FROM t WHERE a <= 3 ORDER BY a DESC;")
    assert res == ExecResult("ok", [(3, "v3"), (2, "v2"), (1, "v1")], None, res.elapsed_s, ("a", "label"))
    assert res.ok and res.elapsed_s >= 0


def test_views_and_ctes_and_functions_are_allowed(hostile_db: Path) -> None:
    res = run_sql(
        hostile_db,
        "WITH w AS (SELECT a FROM v WHERE a < 4) SELECT group_concat(a, ','), abs(-2), upper('x') FROM w",
    )
    assert res.status == "ok" and res.rows == [("1,2,3", 2, "X")]


def test_row_cap_is_an_error_not_a_truncation(hostile_db: Path) -> None:
    assert run_sql(hostile_db, "SELECT a FROM t", max_rows=200).status == "ok"
    res = run_sql(hostile_db, "SELECT a FROM t", max_rows=199)
    assert res.status == "error" and "more than 199 rows" in (res.error or "")


def test_cell_and_byte_caps(hostile_db: Path) -> None:
    assert run_sql(hostile_db, "SELECT a, b FROM t", max_cells=400).status == "ok"
    assert run_sql(hostile_db, "SELECT a, b FROM t", max_cells=399).status == "error"
    n_bytes = sum(len(f"v{i}") for i in range(1, 201))
    assert run_sql(hostile_db, "SELECT b FROM t", max_bytes=n_bytes).status == "ok"
    res = run_sql(hostile_db, "SELECT b FROM t", max_bytes=n_bytes - 1)
    assert res.status == "error" and "bytes" in (res.error or "")


def test_timeout_is_reported_promptly(hostile_db: Path) -> None:
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    res = run_sql(hostile_db, sql, timeout_s=0.3)
    assert res.status == "timeout" and res.rows is None
    assert 0.3 <= res.elapsed_s < 2.0


def test_sees_writes_made_by_others(tmp_path: Path) -> None:
    """Read-only, not immutable: a change to the file is visible to an open sandboxed connection."""
    db = make_db(tmp_path / "w.sqlite", "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    with SandboxedConnection(db) as conn:
        assert conn.execute("SELECT sum(x) FROM t").rows == [(1,)]
        writer = sqlite3.connect(db)
        writer.execute("INSERT INTO t VALUES (41)")
        writer.commit()
        writer.close()
        assert conn.execute("SELECT sum(x) FROM t").rows == [(42,)]


def test_wal_database_stays_unchanged(tmp_path: Path) -> None:
    """A database in WAL mode is read without checkpointing into or rewriting the main file."""
    db = make_db(
        tmp_path / "wal.sqlite", "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (7);"
    )
    before = tree_digest(tmp_path)
    assert run_sql(db, "SELECT x FROM t").rows == [(7,)]
    for case in HOSTILE["cases"][:20]:
        assert run_sql(db, case["sql"].replace("{tmp}", str(tmp_path)), timeout_s=0.5).status != "ok"
    after = tree_digest(tmp_path)
    assert after["wal.sqlite"] == before["wal.sqlite"]
    assert set(after) - set(before) <= {"wal.sqlite-wal", "wal.sqlite-shm"}  # WAL readers may create these


def test_missing_database_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.sqlite"):
        run_sql(tmp_path / "nope.sqlite", "SELECT 1")
    assert not (tmp_path / "nope.sqlite").exists()  # mode=ro never creates the file


def test_not_a_database_is_an_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"this is not sqlite" * 100)
    before = bogus.read_bytes()
    res = run_sql(bogus, "SELECT 1 FROM sqlite_master")
    assert res.status == "error" and "not a database" in (res.error or "")
    assert bogus.read_bytes() == before


HEAP_PROBE = """
import sys
from matsql.sql.execute import Limits, SandboxedConnection
with SandboxedConnection(sys.argv[1], heap_limit_bytes=16 * 2**20) as conn:
    big = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 3000000) "
    res = conn.execute(big + "SELECT length(group_concat(x)) FROM r", Limits(timeout_s=20))
    print(res.status, res.error)
    print(conn.execute("SELECT 1").rows)
"""


def test_heap_limit_turns_memory_exhaustion_into_an_error(hostile_db: Path) -> None:
    """SQLite's heap limit is process-wide, so it is probed in a child process."""
    out = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE, str(hostile_db)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["error out of memory (SQLite heap limit reached)", "[(1,)]"]
