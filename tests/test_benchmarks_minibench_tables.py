"""Row generators of the minibench databases."""

from __future__ import annotations

import random

import pytest

from matsql.benchmarks.minibench_tables import column_order, generate_rows, parse_table

WORDS = {
    "names": ["Ann", "Bob", "Cy"],
    "f": ["Ada", "Eve"],
    "m": ["Al", "Ed"],
    "recs": [{"k": "a"}, {"k": "b"}],
}


def _table(spec: dict) -> list[dict]:
    return generate_rows(parse_table(spec, "test"), WORDS, {}, random.Random(0))


def test_generators_and_dependencies() -> None:
    rows = _table(
        {
            "name": "t",
            "rows": 40,
            "columns": [
                {"name": "id", "type": "INTEGER", "pk": True, "gen": {"serial": 5}},
                {
                    "name": "email",
                    "type": "TEXT",
                    "gen": {"format": {"template": "{first}@x", "lower": True}},
                },
                {
                    "name": "first",
                    "type": "TEXT",
                    "gen": {
                        "by": {
                            "column": "sex",
                            "cases": {"F": {"choice": {"list": "f"}}, "M": {"choice": {"list": "m"}}},
                        }
                    },
                },
                {"name": "sex", "type": "TEXT", "gen": {"choice": {"values": ["F", "M"]}}},
                {"name": "d0", "type": "DATE", "gen": {"date": ["2024-01-01", "2024-01-31"]}},
                {"name": "d1", "type": "DATE", "gen": {"date_after": {"column": "d0", "days": [7, 7]}}},
                {"name": "x", "type": "REAL", "null_rate": 0.5, "gen": {"real": [0, 1, 2]}},
            ],
        }
    )
    assert [r["id"] for r in rows] == list(range(5, 45))
    for r in rows:
        assert r["first"] in (WORDS["f"] if r["sex"] == "F" else WORDS["m"])
        assert r["email"] == f"{r['first'].lower()}@x"
        assert "2024-01-08" <= r["d1"] <= "2024-02-07"
    nulls = sum(r["x"] is None for r in rows)
    assert 5 < nulls < 35
    assert list(rows[0]) == ["id", "email", "first", "sex", "d0", "d1", "x"]  # declared order kept


def test_unique_constraints_and_references() -> None:
    parent = [{"code": c} for c in "ABC"]
    spec = parse_table(
        {
            "name": "pairs",
            "rows": 6,
            "unique": [["a", "b"]],
            "columns": [
                {"name": "a", "type": "TEXT", "references": "p.code", "gen": {"ref": "p.code"}},
                {
                    "name": "b",
                    "type": "TEXT",
                    "references": "p.code",
                    "gen": {"ref": {"column": "p.code", "not_equal": "a"}},
                },
            ],
        },
        "test",
    )
    rows = generate_rows(spec, WORDS, {"p": parent}, random.Random(1))
    pairs = [(r["a"], r["b"]) for r in rows]
    assert len(set(pairs)) == 6 and all(a != b for a, b in pairs)  # all 6 ordered pairs of 3 codes


def test_impossible_uniqueness_is_reported() -> None:
    with pytest.raises(ValueError, match="could not draw a row"):
        _table(
            {
                "name": "t",
                "rows": 4,
                "columns": [{"name": "a", "type": "TEXT", "pk": True, "gen": {"choice": {"list": "names"}}}],
            }
        )


def test_records_and_unique_lists() -> None:
    rows = _table(
        {"name": "t", "records": "recs", "columns": [{"name": "k", "type": "TEXT", "gen": {"field": "k"}}]}
    )
    assert [r["k"] for r in rows] == ["a", "b"]
    rows = _table(
        {
            "name": "t",
            "rows": 3,
            "columns": [{"name": "n", "type": "TEXT", "gen": {"unique": {"list": "names"}}}],
        }
    )
    assert sorted(r["n"] for r in rows) == sorted(WORDS["names"])


def test_same_rng_same_rows() -> None:
    spec = {
        "name": "t",
        "rows": 10,
        "columns": [{"name": "v", "type": "INTEGER", "gen": {"int": [0, 10**9]}}],
    }
    rows = _table(spec)
    random.seed(1)  # the global generator plays no part
    assert len(rows) == 10 and _table(spec) == rows
    assert generate_rows(parse_table(spec, "test"), WORDS, {}, random.Random(1)) != rows  # the given one does


def test_bad_specs() -> None:
    with pytest.raises(ValueError, match="lacks 'columns'"):
        parse_table({"name": "t"}, "where")
    cyc = parse_table(
        {
            "name": "t",
            "rows": 1,
            "columns": [
                {"name": "a", "type": "TEXT", "gen": {"format": {"template": "{b}"}}},
                {"name": "b", "type": "TEXT", "gen": {"format": {"template": "{a}"}}},
            ],
        },
        "test",
    )
    with pytest.raises(ValueError, match="circular"):
        column_order(cyc)
    with pytest.raises(ValueError, match="unknown generator"):
        _table({"name": "t", "rows": 1, "columns": [{"name": "a", "type": "TEXT", "gen": {"magic": 1}}]})
