"""Question templates of the minibench: placeholders, literals, acceptance of instances."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing

import pytest

from matsql.benchmarks.minibench_questions import informative, instantiate, parse_family, render, sql_literal


@pytest.mark.parametrize(
    ("value", "literal"), [("O'Brien", "'O''Brien'"), (3, "3"), (2.5, "2.5"), (None, "NULL"), (True, "1")]
)
def test_sql_literal(value: object, literal: str) -> None:
    assert sql_literal(value) == literal


def test_render_placeholders() -> None:
    slots = {"g": {"value": "F", "text": "female", "code": "x'y"}}
    assert render("{g} / {g.sql} / {g.code} / {g.code_sql}", slots, "t") == "female / 'F' / x'y / 'x''y'"
    with pytest.raises(ValueError, match="unknown slot"):
        render("{h}", slots, "family f")
    with pytest.raises(ValueError, match="no field 'nope'"):
        render("{g.nope}", slots, "family f")


@pytest.mark.parametrize(
    ("rows", "ok"),
    [
        ([], False),
        ([(None,)], False),
        ([(0,)], False),
        ([(None, None)], False),
        ([(0,), (1,)], True),
        ([(0, "a")], True),
        ([(3,)], True),
    ],
)
def test_informative(rows: list, ok: bool) -> None:
    assert informative(rows) is ok


@pytest.fixture
def conn() -> sqlite3.Connection:
    with closing(sqlite3.connect(":memory:")) as c:
        c.executescript(
            "CREATE TABLE p (name TEXT, city TEXT, age INT);"
            "INSERT INTO p VALUES ('Ann', 'Oslo', 30), ('Bob', 'Oslo', 40), ('Cy', 'Rome', 40), ('Di', 'Rome', 20);"
        )
        yield c


def test_instantiate_distinct_and_checked(conn: sqlite3.Connection) -> None:
    fam = parse_family(
        {
            "id": "oldest",
            "db": "x",
            "difficulty": "moderate",
            "question": ["Who is the oldest person in {city}?"],
            "evidence": "oldest refers to MAX(age)",
            "sql": "SELECT name FROM p WHERE city = {city.sql} ORDER BY age DESC LIMIT 1",
            # unambiguous top only: Oslo has one oldest (Bob); Rome too (Cy)
            "require": "SELECT COUNT(*) = 1 FROM p WHERE city = {city.sql} AND age = (SELECT MAX(age) FROM p WHERE city = {city.sql})",
            "slots": {"city": {"values": "SELECT DISTINCT city FROM p ORDER BY city"}},
            "n": 5,
        },
        "test",
    )
    out = instantiate(fam, conn, random.Random(0))
    assert sorted(i.question for i in out) == [
        "Who is the oldest person in Oslo?",
        "Who is the oldest person in Rome?",
    ]
    assert all(i.difficulty == "moderate" and i.db_id == "x" for i in out)


def test_require_rejects_ties(conn: sqlite3.Connection) -> None:
    fam = parse_family(
        {
            "id": "tie",
            "db": "x",
            "difficulty": "simple",
            "question": "Who is {a}?",
            "sql": "SELECT name FROM p WHERE age = {a}",
            "require": "SELECT COUNT(*) = 1 FROM p WHERE age = {a}",
            "slots": {"a": {"choice": [40]}},
        },
        "test",
    )
    assert instantiate(fam, conn, random.Random(0)) == []


def test_failing_gold_sql_names_the_family(conn: sqlite3.Connection) -> None:
    fam = parse_family(
        {"id": "broken", "db": "x", "difficulty": "simple", "question": "?", "sql": "SELECT nope FROM p"}, "t"
    )
    with pytest.raises(ValueError, match="question family broken"):
        instantiate(fam, conn, random.Random(0))


def test_bad_family_specs() -> None:
    with pytest.raises(ValueError, match="lacks 'sql'"):
        parse_family({"id": "a", "db": "x", "difficulty": "simple", "question": "?"}, "file.yaml:families[3]")
    with pytest.raises(ValueError, match="difficulty must be one of"):
        parse_family({"id": "a", "db": "x", "difficulty": "hard", "question": "?", "sql": "SELECT 1"}, "f")
