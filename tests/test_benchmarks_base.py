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
    ids = msg.split("first question ids:", 1)[1]  # the folder named before may hold "t-7" (pytest-72)
    assert ids.startswith(" t-1, t-3, t-4, t-5, t-6, ...") and "t-7" not in ids


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


def test_the_schema_style_is_an_argument_not_the_environment(
    bench: Benchmark, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATSQL_SCHEMA_STYLE", "tiny")  # once read from here; now ignored
    mats, tiny = bench.schema_text("here"), bench.schema_text("here", "tiny")
    assert mats.startswith("database schema :") and tiny != mats
    assert bench.schema_of("tiny")("here") == tiny and bench.schema_of("mats")("here") == mats


def test_rollout_services_build_prompts_in_the_configured_style(bench: Benchmark) -> None:
    from matsql.rollout.config import RolloutConfig
    from matsql.rollout.services import real_services
    from matsql.team import Team

    cfg = RolloutConfig(benchmark="toy", validators=[], gate="never", schema_style="tiny")
    with real_services(cfg, Team(agents={}), bench, backends={}) as svc:
        assert svc.schema_of("here") == bench.schema_text("here", "tiny")
