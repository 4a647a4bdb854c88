"""Spider loaders: counts on the real data (README of the data folder) and format errors."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from matsql.benchmarks import BenchmarkDataError, load_benchmark
from matsql.benchmarks.paths import data_root
from matsql.benchmarks.spider import load_spider_dev, read_gold_sql
from tests.real_benchmarks import real_benchmark


def _need(rel: str) -> Path:
    root = data_root()
    if not (root / rel).exists():
        pytest.skip(f"{rel} not found at {root / rel}")
    return root


def test_spider_dev_counts() -> None:
    root = _need("spider/dev.json")
    b = load_benchmark("spider-dev")
    assert len(b.questions) == 1034
    assert len(b.runnable) == 972
    assert b.missing_dbs == {"wta_1": 62}
    assert b.questions[0].question_id == "spider-dev-0" and b.questions[-1].question_id == "spider-dev-1033"
    assert len({q.question_id for q in b.questions}) == 1034
    gold = read_gold_sql(root / "spider" / "dev_gold.sql")
    assert [q.gold_sql for q in b.questions] == [g for g, _ in gold]
    assert {q.difficulty for q in b.questions} == {"easy", "medium", "hard", "extra"}
    assert all(q.benchmark == "spider-dev" and q.evidence == "" for q in b.questions)


def test_spider_train_counts() -> None:
    _need("spider-syn/train_spider.json")
    b = real_benchmark("spider-train")  # load_benchmark's, loaded once for every test that reads it
    assert len(b.questions) == 7000
    assert len(b.missing) == 96
    assert set(b.missing_dbs) == {"baseball_1", "soccer_1"}
    assert b.questions[0].question == "How many heads of the departments are older than 56 ?"
    assert b.questions[0].gold_sql == "SELECT count(*) FROM head WHERE age  >  56"
    assert "approx" in b.difficulty_source


def _tiny_spider(root: Path, gold_db: str = "pets") -> None:
    (root / "spider" / "database" / "pets").mkdir(parents=True)
    with closing(sqlite3.connect(root / "spider" / "database" / "pets" / "pets.sqlite")) as conn:
        conn.executescript("CREATE TABLE p (a INT);")
    rows = [{"db_id": "pets", "question": "How many?", "query": "SELECT count(*) FROM p"}]
    (root / "spider" / "dev.json").write_text(json.dumps(rows))
    (root / "spider" / "dev_gold.sql").write_text(f"SELECT count(*) FROM p\t{gold_db}\n\n")


def test_spider_dev_without_parsed_sql_uses_approximation(tmp_path: Path) -> None:
    _tiny_spider(tmp_path)
    b = load_spider_dev(tmp_path)
    assert [(q.question_id, q.difficulty) for q in b.questions] == [("spider-dev-0", "easy")]
    assert b.runnable == b.questions


def test_gold_db_mismatch_names_the_file(tmp_path: Path) -> None:
    _tiny_spider(tmp_path, gold_db="other")
    with pytest.raises(ValueError, match=r"dev_gold\.sql"):
        load_spider_dev(tmp_path)


def test_bad_gold_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "gold.sql").write_text("SELECT 1\tdb\nSELECT 2 no tab\n")
    with pytest.raises(ValueError, match=r"gold.sql:2"):
        read_gold_sql(tmp_path / "gold.sql")


def test_missing_field_names_file_and_entry(tmp_path: Path) -> None:
    (tmp_path / "spider-syn").mkdir()
    (tmp_path / "spider-syn" / "train_spider.json").write_text(
        json.dumps([{"db_id": "x", "query": "SELECT 1"}])
    )
    with pytest.raises(ValueError, match=r"train_spider.json: entry 0 has no field 'SpiderQuestion'"):
        load_benchmark("spider-train", tmp_path)


def test_absent_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match="MATSQL_DATA"):
        load_benchmark("spider-dev", tmp_path)


def test_approx_hardness_is_remembered_and_a_damaged_memory_is_rebuilt(tmp_path, monkeypatch):
    """spider-train's 7,000 sqlglot parses are done once per cache folder, not once per process:
    the labels come back the same from the file, and a damaged file is rebuilt."""
    from matsql.benchmarks import spider
    from matsql.benchmarks.hardness import approx_hardness

    monkeypatch.setenv("MATSQL_CACHE", str(tmp_path / "cache"))  # not there yet: made
    queries = [
        "SELECT name FROM singer",
        "SELECT count(*) FROM singer WHERE age > 20 GROUP BY country ORDER BY count(*) DESC LIMIT 1",
        "SELECT name FROM singer",  # twice: one entry, two answers
        "not sql at all ((",
    ]
    want = [approx_hardness(q) for q in queries]
    assert spider.approx_hardness_remembered(queries) == want
    (memory,) = (tmp_path / "cache").glob("hardness-approx-v*-sqlglot-*.json")
    assert len(json.loads(memory.read_text())) == 3

    def parse_again(q):
        raise AssertionError(f"parsed again: {q}")

    monkeypatch.setattr(spider, "approx_hardness", parse_again)
    assert spider.approx_hardness_remembered(queries) == want  # from the file
    memory.write_text('["damaged"]')
    monkeypatch.setattr(spider, "approx_hardness", approx_hardness)
    assert spider.approx_hardness_remembered(queries[:2]) == want[:2]
    assert sorted(json.loads(memory.read_text())) == sorted(set(queries[:2]))
