"""BIRD loaders: mini-dev on the real data, full dev on a tiny fixture in the official layout."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from matsql.benchmarks import BenchmarkDataError, load_benchmark
from matsql.benchmarks.bird import unique_ids
from matsql.benchmarks.paths import data_root


def test_unique_ids_suffix_repeats_in_order() -> None:
    assert unique_ids(["a", "b", "a", "a", "b"]) == ["a", "b", "a#2", "a#3", "b#2"]


def test_minidev_counts_and_duplicate_ids() -> None:
    path = data_root() / "bird" / "MINIDEV" / "mini_dev_sqlite.json"
    if not path.exists():
        pytest.skip(f"BIRD mini-dev not found at {path}")
    b = load_benchmark("bird-minidev")
    assert len(b.questions) == 500
    assert len(b.runnable) == 52
    assert {q.db_id for q in b.runnable} == {"superhero"}
    ids = [q.question_id for q in b.questions]
    assert len(set(ids)) == 500
    assert ids.index("bird-minidev-137") < ids.index("bird-minidev-137#2")
    assert "bird-minidev-138#2" in ids
    first = json.loads(path.read_text())[0]
    q = b.questions[0]
    assert (q.question, q.evidence, q.gold_sql, q.difficulty) == (
        first["question"],
        first["evidence"],
        first["SQL"],
        first["difficulty"],
    )
    assert "superhero" in b.schema_text("superhero")


def _bird_dev_fixture(root: Path) -> None:
    """Two questions in BIRD's dev layout; one needs a database that is not there."""
    base = root / "bird" / "dev"
    db = base / "dev_databases" / "zoo"
    (db / "database_description").mkdir(parents=True)
    conn = sqlite3.connect(db / "zoo.sqlite")
    conn.executescript(
        "CREATE TABLE animal (id INTEGER PRIMARY KEY, kind TEXT); INSERT INTO animal VALUES (1, 'lion');"
    )
    conn.close()
    # a cp1252 description file with a BOM-less header and a bullet (0x95)
    (db / "database_description" / "animal.csv").write_bytes(
        b"original_column_name,column_name,column_description,data_format,value_description\r\n"
        b"kind,,animal kind \x95 species,text,\r\n"
    )
    rows = [
        {
            "question_id": 0,
            "db_id": "zoo",
            "question": "Kinds?",
            "evidence": "",
            "SQL": "SELECT kind FROM animal",
            "difficulty": "simple",
        },
        {
            "question_id": 1,
            "db_id": "farm",
            "question": "Cows?",
            "evidence": "cow refers to kind = 'cow'",
            "SQL": "SELECT 1",
            "difficulty": "moderate",
        },
    ]
    (base / "dev.json").write_text(json.dumps(rows))
    (base / "dev_tables.json").write_text("[]")


def test_bird_dev_layout(tmp_path: Path) -> None:
    _bird_dev_fixture(tmp_path)
    b = load_benchmark("bird-dev", tmp_path)
    assert [q.question_id for q in b.questions] == ["bird-dev-0", "bird-dev-1"]
    assert [q.question_id for q in b.runnable] == ["bird-dev-0"]
    assert b.missing_dbs == {"farm": 1}
    assert b.questions[1].evidence == "cow refers to kind = 'cow'"
    assert b.db_path("zoo") == tmp_path / "bird" / "dev" / "dev_databases" / "zoo" / "zoo.sqlite"
    assert "comment : animal kind \u2022 species" in b.schema_text("zoo")


def test_bird_dev_absent_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"bird/dev/dev.json"):
        load_benchmark("bird-dev", tmp_path)


def test_entry_without_sql_names_file_and_entry(tmp_path: Path) -> None:
    _bird_dev_fixture(tmp_path)
    path = tmp_path / "bird" / "dev" / "dev.json"
    path.write_text(json.dumps([{"question_id": 5, "db_id": "zoo", "question": "?"}]))
    with pytest.raises(ValueError, match=r"dev.json: entry 0 lacks field\(s\) \['SQL'\]"):
        load_benchmark("bird-dev", tmp_path)
