"""`matsql data check` / `matsql data minibench`: the report (pure) and the CLI shell."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.benchmarks import Benchmark
from matsql.benchmarks.check import summarize
from matsql.benchmarks.commands import data_app
from matsql.benchmarks.paths import data_root
from matsql.records import Question
from matsql.sql import ExecResult

runner = CliRunner()


def _q(i: int, db: str, diff: str) -> Question:
    return Question(question_id=f"t-{i}", db_id=db, question="?", gold_sql="SELECT 1", difficulty=diff)


def test_summarize_counts(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with closing(sqlite3.connect(tmp_path / "a" / "a.sqlite")):
        pass
    qs = [_q(0, "a", "hard"), _q(1, "a", "easy"), _q(2, "b", "easy"), _q(3, "a", "easy")]
    bench = Benchmark("toy", qs, tmp_path, difficulty_source="test")
    gold = [
        ExecResult("ok", [(1,)], None, 0.0),
        ExecResult("ok", [], None, 0.0),
        ExecResult("timeout", None, "timeout after 30 s", 30.0),
    ]
    r = summarize(bench, gold)
    assert (r.questions, r.runnable, r.missing, r.missing_dbs) == (4, 3, 1, {"b": 1})
    assert (r.distinct_dbs, r.present_dbs) == (2, 1)
    assert (r.gold_ok, r.gold_empty) == (2, 1)
    assert r.gold_failed == [
        {"question_id": "t-3", "db_id": "a", "status": "timeout", "error": "timeout after 30 s"}
    ]
    assert list(r.by_difficulty) == ["easy", "hard"]
    assert (
        r.by_difficulty["easy"].questions,
        r.by_difficulty["easy"].runnable,
        r.by_difficulty["easy"].gold_ok,
    ) == (3, 2, 1)
    assert summarize(bench, None).gold_checked is False
    with pytest.raises(ValueError, match="gold results"):
        summarize(bench, gold[:1])


def test_cli_minibench_then_check_json(tmp_path: Path) -> None:
    out = tmp_path / "mb"
    res = runner.invoke(data_app, ["minibench", str(out), "--seed", "0"])
    assert res.exit_code == 0, res.output
    assert "5 databases" in res.output
    assert runner.invoke(data_app, ["minibench", str(out)]).exit_code == 2  # exists, no --force
    res = runner.invoke(
        data_app, ["check", "--benchmark", "minibench", "--data", str(out), "--json", "--workers", "1"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    n = len(json.loads((out / "dev.json").read_text()))
    assert report["questions"] == report["runnable"] == report["gold_ok"] == n
    assert report["missing"] == 0 and report["gold_failed"] == []
    assert set(report["by_difficulty"]) == {"simple", "moderate", "challenging"}


def test_cli_reports_missing_data(tmp_path: Path) -> None:
    res = runner.invoke(data_app, ["check", "--benchmark", "bird-dev", "--data", str(tmp_path)])
    assert res.exit_code == 2
    res = runner.invoke(data_app, ["check", "--benchmark", "nope", "--data", str(tmp_path)])
    assert res.exit_code == 2


def test_cli_check_spider_dev_real() -> None:
    if not (data_root() / "spider" / "dev.json").exists():
        pytest.skip(f"Spider dev not found at {data_root()}")
    res = runner.invoke(data_app, ["check", "--benchmark", "spider-dev", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert (r["questions"], r["runnable"], r["gold_ok"]) == (1034, 972, 972)
    assert r["missing_dbs"] == {"wta_1": 62}
