"""Issue 17: hostile SQL is bounded in time and memory, through the Executor's workers.

Each case here takes a few seconds at most; the whole corpus (``tests/hostile_corpus.py``, 128
queries, ~1 min on 2 cores) is marked slow. ``benchmarks/bench_hostile.py`` measures the same
corpus at the default caps.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from matsql.sql import Executor
from tests.hostile_corpus import CASES, SETUP
from tests.test_sql_execute import make_db, tree_digest

TIMEOUT_S = 0.5
GRACE_S = 1.0  # the bound: every query returns within deadline + 1 s


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("hostile17") / "db.sqlite", SETUP)


@pytest.fixture(scope="module")
def ex() -> Executor:
    with Executor(workers=2, timeout_s=TIMEOUT_S) as e:
        yield e


def _timed(ex: Executor, db: Path, sql: str):
    start = time.monotonic()
    res = ex.run(db, sql.replace("{tmp}", str(db.parent)))
    return res, time.monotonic() - start


# Single SQLite steps that the progress handler cannot interrupt (they took 45-68 s before).
SLOW_STEPS = [
    "SELECT length(printf('%.*c', 2147483647, 'x'))",
    "SELECT instr(hex(zeroblob(4000000)), hex(zeroblob(1000000)) || '1')",
]


@pytest.mark.parametrize("sql", SLOW_STEPS, ids=["printf", "instr"])
def test_one_slow_step_cannot_outrun_the_deadline(ex: Executor, db: Path, sql: str) -> None:
    ex.run(db, "SELECT 1")  # workers up: start-up is not the query's time
    before = tree_digest(db.parent)
    kills = ex.stats.deadline_kills
    res, wall = _timed(ex, db, sql)
    assert res.status == "timeout" and "killed" in (res.error or "")
    assert wall < TIMEOUT_S + GRACE_S
    assert ex.stats.deadline_kills == kills + 1
    assert ex.run(db, "SELECT 7").rows == [(7,)]  # the worker was replaced
    assert tree_digest(db.parent) == before


def test_a_killed_query_does_not_take_its_neighbours_with_it(ex: Executor, db: Path) -> None:
    sqls = ["SELECT 1", SLOW_STEPS[0], "SELECT 2", "SELECT 3"]
    res = ex.run_many([(db, s + f" -- {time.time()}") for s in sqls])  # fresh keys: no cache
    assert [r.status for r in res] == ["ok", "timeout", "ok", "ok"]
    assert [r.rows for r in res if r.ok] == [[(1,)], [(2,)], [(3,)]]


def test_a_timed_out_gold_makes_every_prediction_wrong_but_still_runs_them(ex: Executor, db: Path) -> None:
    gold = SLOW_STEPS[1] + " -- gold"
    judged = ex.judge_many([(db, "SELECT count(*) FROM t", gold), (db, "SELECT nope", gold)])
    assert [j.gold.status for j in judged] == ["timeout", "timeout"]
    assert [j.correct for j in judged] == [False, False]
    assert judged[0].pred.status == "ok" and judged[0].pred.n_rows == 1
    assert judged[1].pred.status == "error"


def test_memory_watchdog_kills_a_worker_that_grows(db: Path) -> None:
    sql = "SELECT randomblob(50000000), randomblob(50000000), randomblob(50000000), randomblob(50000000)"
    with Executor(workers=1, timeout_s=10, worker_max_rss=150 * 2**20) as ex:
        start = time.monotonic()
        res = ex.run(db, sql)
        assert res.status == "error" and "MiB" in (res.error or ""), res
        assert ex.stats.memory_kills == 1
        assert time.monotonic() - start < 5
        assert ex.run(db, "SELECT 1").rows == [(1,)]


BYTE_CAP_PROBE = """
import sys
from matsql.sql import run_sql
sql = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50) "
       "SELECT hex(zeroblob(15000000)) FROM c")  # 50 rows of 30 MB
res = run_sql(sys.argv[1], sql, max_bytes=64 * 2**20, timeout_s=30)
print(res.status, res.error)
# VmHWM: this process's own peak (ru_maxrss may carry the spawning parent's peak across exec)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) // 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_byte_cap_is_checked_as_rows_arrive(db: Path) -> None:
    """50 rows of 30 MB against a 64 MiB cap: refused after the third row, not after 1.5 GB."""
    out = subprocess.run(
        [sys.executable, "-c", BYTE_CAP_PROBE, str(db)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    status, peak_mib = out.stdout.splitlines()
    assert status.startswith("error result too large: more than 67108864 bytes"), out.stdout
    assert int(peak_mib) < 400, out.stdout  # fetching a 1024-row batch first would hold 1.5 GB


def test_results_come_back_as_digests_not_rows(db: Path) -> None:
    with Executor(workers=1, keep_rows=False) as ex:
        res = ex.run(db, "SELECT a, b FROM t")
        assert res.rows is None and res.n_rows == 200 and res.digest and "(200 rows" in (res.preview or "")
        (j,) = ex.judge_many([(db, "SELECT b, a FROM t ORDER BY a DESC", "SELECT a, b FROM t")], "spider")
        assert j.correct and j.pred.rows is None and j.gold.rows is None
        (j,) = ex.judge_many([(db, "SELECT b, a FROM t", "SELECT a, b FROM t")], "bird")
        assert not j.correct  # BIRD: column order matters


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["write", "escape", "memory", "cpu", "slow_builtin"])
def test_hostile_corpus_is_refused_or_bounded(ex: Executor, db: Path, kind: str) -> None:
    ex.run(db, "SELECT 1")
    before = tree_digest(db.parent)
    for k, sql in CASES:
        if k != kind:
            continue
        res, wall = _timed(ex, db, sql)
        assert wall < TIMEOUT_S + GRACE_S, (sql, res)
        if kind in ("write", "escape"):
            assert res.status == "error", (sql, res)
    assert tree_digest(db.parent) == before


def test_workers_together_stay_within_the_memory_budget(db: Path) -> None:
    """Two workers each under their own cap, together past the budget: the larger busy one goes."""
    sql = "SELECT length(group_concat(x)) FROM (SELECT randomblob(50000000) AS x UNION ALL SELECT randomblob(50000000)) -- {i}"
    with Executor(workers=2, timeout_s=10, worker_max_rss=10 * 2**30, memory_budget=200 * 2**20) as ex:
        res = ex.run_many([(db, sql.format(i=i)) for i in range(2)])
        assert ex.stats.memory_kills >= 1
        assert any("memory budget of 200 MiB" in (r.error or "") for r in res), res
        assert ex.run(db, "SELECT 1").rows == [(1,)]


def test_a_killed_prediction_keeps_the_verdicts_of_the_others(ex: Executor, db: Path) -> None:
    """Gold, then predictions in one worker task: the slow one is killed, the gold is re-run on
    a fresh worker for the predictions after it, and every verdict is right."""
    gold = f"SELECT a FROM t WHERE a < 5 -- {time.time()}"
    preds = [
        "SELECT a FROM t WHERE a <= 4",
        SLOW_STEPS[0] + f" -- {time.time()}",
        "SELECT a FROM t WHERE a < 4",
        "SELECT 4 UNION SELECT 3 UNION SELECT 2 UNION SELECT 1",
    ]
    judged = ex.judge_many([(db, p, gold) for p in preds], "spider")
    assert [j.correct for j in judged] == [True, False, False, True]
    assert [j.pred.status for j in judged] == ["ok", "timeout", "ok", "ok"]
    assert all(j.gold.status == "ok" and j.gold.n_rows == 4 for j in judged)
