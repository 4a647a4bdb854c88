"""Benchmark object: runnable / missing questions and the missing-database policy."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from matsql.benchmarks import Benchmark, MissingDatabaseError
from matsql.records import Question


def _q(i: int, db: str) -> Question:
    return Question(question_id=f"t-{i}", db_id=db, question="?", gold_sql="SELECT 1")


@pytest.fixture
def bench(tmp_path: Path) -> Benchmark:
    (tmp_path / "here").mkdir()
    with closing(sqlite3.connect(tmp_path / "here" / "here.sqlite")) as conn:
        conn.executescript("CREATE TABLE t (a INT);")
    qs = [_q(0, "here"), _q(1, "gone"), _q(2, "here"), *(_q(i, "lost") for i in range(3, 10))]
    return Benchmark("toy", qs, tmp_path)


def test_runnable_and_missing(bench: Benchmark) -> None:
    assert [q.question_id for q in bench.runnable] == ["t-0", "t-2"]
    assert [q.question_id for q in bench.missing] == ["t-1", *(f"t-{i}" for i in range(3, 10))]
    assert bench.missing_dbs == {"gone": 1, "lost": 7}
    assert bench.db_ids == ["here", "gone", "lost"]
    assert bench.has_db("here") and not bench.has_db("gone")


def test_policy_wrong_keeps_everything(bench: Benchmark) -> None:
    assert bench.select("wrong") == bench.questions
    assert bench.select() == bench.questions


def test_policy_skip_keeps_runnable(bench: Benchmark) -> None:
    assert bench.select("skip") == bench.runnable


def test_policy_error_names_questions_and_databases(bench: Benchmark) -> None:
    with pytest.raises(MissingDatabaseError) as e:
        bench.select("error")
    msg = str(e.value)
    assert "8 of 10 questions" in msg
    assert "gone (1 questions)" in msg and "lost (7 questions)" in msg
    assert "t-1, t-3, t-4, t-5, t-6, ..." in msg and "t-7" not in msg


def test_policy_error_passes_when_nothing_is_missing(tmp_path: Path) -> None:
    (tmp_path / "here").mkdir()
    sqlite3.connect(tmp_path / "here" / "here.sqlite").close()
    b = Benchmark("toy", [_q(0, "here")], tmp_path)
    assert b.select("error") == b.questions


def test_unknown_policy(bench: Benchmark) -> None:
    with pytest.raises(ValueError, match="missing policy"):
        bench.select("drop")  # type: ignore[arg-type]


def test_schema_text_of_missing_db_is_an_error(bench: Benchmark) -> None:
    with pytest.raises(MissingDatabaseError, match="gone"):
        bench.schema_text("gone")
    assert bench.schema_text("here").startswith("database schema :")
