"""Executor: the pool gives run_sql's results and verdicts, keeps order, caches, survives a crash."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from matsql.sql import Executor, run_sql
from matsql.sql.executor import plan_chunks, plan_db_chunks, results_match
from tests.test_sql_execute import HOSTILE, make_db, tree_digest

FIXTURES = Path(__file__).parent / "fixtures" / "sql"
EX = yaml.safe_load((FIXTURES / "ex_cases.yaml").read_text())
TIMEOUT_S = 0.5


def same_result(a, b) -> bool:
    """Equal up to timing."""
    return (a.status, a.rows, a.error, a.columns) == (b.status, b.rows, b.error, b.columns)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("executor")
    return make_db(folder / "ex.sqlite", EX["setup"]), make_db(folder / "hostile.sqlite", HOSTILE["setup"])


@pytest.fixture(scope="module")
def pool() -> Executor:
    with Executor(workers=2, timeout_s=TIMEOUT_S, max_rows=20_000) as ex:
        yield ex


@pytest.mark.parametrize("mode", ["bird", "spider"])
def test_pool_verdicts_equal_run_sql_verdicts(pool: Executor, dbs: tuple[Path, Path], mode: str) -> None:
    db = dbs[0]
    items = [(db, c["pred"], c["gold"]) for c in EX["cases"]]
    expected = [
        results_match(run_sql(db, p, timeout_s=TIMEOUT_S), run_sql(db, g, timeout_s=TIMEOUT_S), mode, g)
        for _, p, g in items
    ]
    assert expected == [c[mode] for c in EX["cases"]]
    assert pool.score_many(items, mode) == expected
    assert [pool.score(db, p, g, mode) for _, p, g in items] == expected


def test_workers_apply_the_same_sandbox(pool: Executor, dbs: tuple[Path, Path]) -> None:
    db = dbs[1]
    before = tree_digest(db.parent)
    cases = [c for c in HOSTILE["cases"] if "timeout_s" not in c]
    sqls = [c["sql"].replace("{tmp}", str(db.parent)) for c in cases]
    results = pool.run_many([(db, s) for s in sqls])
    assert [r.status for r in results] == [c["status"] for c in cases]
    for sql, res in zip(sqls, results, strict=True):
        assert same_result(res, run_sql(db, sql, timeout_s=TIMEOUT_S, max_rows=20_000)), sql
    assert tree_digest(db.parent) == before


def test_run_many_preserves_order_across_databases(pool: Executor, dbs: tuple[Path, Path]) -> None:
    ex_db, h_db = dbs
    items = []
    for i in range(60):  # interleaved databases, repeats, distinct texts
        items.append((h_db, f"SELECT a, b FROM t WHERE a = {i % 25}"))
        items.append((ex_db, f"SELECT name FROM singer WHERE id = {i % 7} -- {i}"))
    results = pool.run_many(items)
    assert len(results) == len(items)
    for (db, sql), res in zip(items, results, strict=True):
        assert same_result(res, run_sql(db, sql)), sql


def test_cache_runs_each_distinct_query_once(dbs: tuple[Path, Path]) -> None:
    db = dbs[0]
    items = [(db, "SELECT name FROM singer"), (db, "SELECT age FROM singer"), (db, "SELECT name FROM singer")]
    with Executor(workers=1, in_process=True) as ex:
        first = ex.run_many(items)
        assert (ex.stats.executed, ex.stats.cache_hits) == (2, 1)
        second = ex.run_many(items)
        assert (ex.stats.executed, ex.stats.cache_hits) == (2, 4)
        assert second[0] is first[0] and second[2] is first[0]
        assert ex.score(db, "SELECT name FROM singer", "SELECT name FROM singer ORDER BY id")
        assert ex.stats.executed == 3  # the pred was cached; only the new gold text ran


def test_cache_key_follows_the_file(tmp_path: Path) -> None:
    db = make_db(tmp_path / "c.sqlite", "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    with Executor(workers=1, in_process=True) as ex:
        assert ex.run(db, "SELECT sum(x) FROM t").rows == [(1,)]
        time.sleep(0.01)
        writer = sqlite3.connect(db)
        writer.execute("INSERT INTO t VALUES (2)")
        writer.commit()
        writer.close()
        assert ex.run(db, "SELECT sum(x) FROM t").rows == [(3,)]
        assert ex.stats.executed == 2


def test_cache_off_runs_everything(dbs: tuple[Path, Path]) -> None:
    with Executor(workers=1, in_process=True, cache=False) as ex:
        ex.run_many([(dbs[0], "SELECT 1")] * 3)
        assert (ex.stats.executed, ex.stats.cache_hits) == (3, 0)


def test_cache_memory_bound_evicts_oldest(dbs: tuple[Path, Path]) -> None:
    db = dbs[1]
    with Executor(workers=1, in_process=True, cache_max_bytes=40_000) as ex:
        ex.run(db, "SELECT a, b FROM t")  # 200 rows of (int, text): ~ 30 kB held
        assert 20_000 < ex.cache_bytes <= 40_000
        ex.run(db, "SELECT b FROM t")  # ~ 23 kB: evicts the first
        ex.run(db, "SELECT a, b FROM t")
        assert ex.stats.executed == 3
        assert ex.cache_bytes <= 40_000


def test_in_process_equals_pool(pool: Executor, dbs: tuple[Path, Path]) -> None:
    items = [(dbs[0], c["pred"]) for c in EX["cases"] if not c.get("slow")]
    with Executor(in_process=True, timeout_s=TIMEOUT_S, max_rows=20_000) as local:
        for a, b in zip(local.run_many(items), pool.run_many(items), strict=True):
            assert same_result(a, b)


def test_missing_database_raises(pool: Executor, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.sqlite"):
        pool.run_many([(tmp_path / "absent.sqlite", "SELECT 1")])


def test_a_dying_worker_loses_only_its_query(dbs: tuple[Path, Path]) -> None:
    """A worker killed from outside (an OOM kill, say) mid-query: that query is an error, the
    others of its task are re-run on a fresh worker, and the executor keeps working."""
    import signal
    import threading

    db = dbs[0]
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    sqls = [f"SELECT {i}" for i in range(6)]
    sqls.insert(3, slow)
    with Executor(workers=1, timeout_s=20) as ex:
        ex.run(db, "SELECT 0")  # workers up
        pid = ex.worker_pids()[0]
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
        results = ex.run_many([(db, s) for s in sqls])
        assert ex.stats.worker_crashes == 1
        assert results[3].status == "error" and "worker process died" in (results[3].error or "")
        assert [r.rows for i, r in enumerate(results) if i != 3] == [[(i,)] for i in range(6)]
        assert pid not in ex.worker_pids()
        assert ex.run(db, "SELECT 42").rows == [(42,)]


def test_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="workers"):
        Executor(workers=-1)


def test_plan_chunks_covers_every_task_once_and_keeps_databases_together() -> None:
    dbs = ["a"] * 5 + ["b"] * 40 + ["c"] * 3 + ["a"] * 2  # "a" also appears late
    chunks = plan_chunks(dbs, workers=2)  # target size ceil(50 / 8) = 7
    assert sorted(i for c in chunks for i in c) == list(range(len(dbs)))
    assert all(len(c) <= 7 for c in chunks)
    assert len({i for i, d in enumerate(dbs) if d == "a"} & set(chunks[0])) == 7  # all of "a" in one chunk
    assert sum(1 for c in chunks if {dbs[i] for i in c} == {"b"}) == 6  # a big database is split evenly
    assert plan_chunks([], workers=4) == []


def test_db_chunks_hold_one_database_each() -> None:
    dbs = ["a"] * 3 + ["b"] * 2 + ["c"] + ["a"] * 4
    chunks = plan_db_chunks(dbs, workers=1)
    assert sorted(i for c in chunks for i in c) == list(range(len(dbs)))
    assert all(len({dbs[i] for i in c}) == 1 for c in chunks)


def test_many_databases_in_one_call(dbs: tuple[Path, Path]) -> None:
    """Queries of two databases interleaved: each runs on its own database (a task is one file)."""
    items = [(dbs[i % 2], "SELECT count(*) FROM t" if i % 2 else "SELECT 1") for i in range(40)]
    with Executor(workers=2) as ex:
        res = ex.run_many(items)
    assert [r.rows for r in res] == [[(200,)] if i % 2 else [(1,)] for i in range(40)]
