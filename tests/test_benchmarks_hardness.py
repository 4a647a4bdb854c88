"""Spider hardness: the official rule (parsed `sql` field) and its sqlglot re-implementation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from matsql.benchmarks.hardness import (
    Components,
    approx_components,
    approx_hardness,
    level,
    official_components,
    official_hardness,
)
from matsql.benchmarks.paths import data_root

CASES = yaml.safe_load(
    (Path(__file__).parent / "fixtures" / "benchmarks" / "spider_hardness_cases.yaml").read_text()
)


@pytest.mark.parametrize("case", CASES, ids=[c["sql"][:40] for c in CASES])
def test_approx_components_and_level(case: dict) -> None:
    assert approx_components(case["sql"]) == Components(*case["comp"])
    assert approx_hardness(case["sql"]) == case["level"]


@pytest.mark.parametrize(
    ("comp", "expected"),
    [
        ((1, 0, 0), "easy"),
        ((2, 0, 1), "medium"),
        ((0, 0, 2), "medium"),
        ((1, 0, 3), "hard"),
        ((3, 0, 2), "hard"),
        ((1, 1, 0), "hard"),
        ((1, 1, 1), "extra"),
        ((4, 0, 0), "extra"),
        ((0, 2, 0), "extra"),
    ],
)
def test_level_boundaries(comp: tuple[int, int, int], expected: str) -> None:
    assert level(Components(*comp)) == expected


def test_unparseable_sql_is_unknown() -> None:
    assert approx_hardness("SELEC nonsense FROM") == "unknown"
    assert approx_hardness("UPDATE t SET a = 1") == "unknown"


def _spider_dev() -> list[dict]:
    path = data_root() / "spider" / "dev.json"
    if not path.exists():
        pytest.skip(f"Spider dev not found at {path}")
    return json.loads(path.read_text())


def test_official_rule_reproduces_published_dev_split() -> None:
    # Spider dev hardness counts as published with the benchmark: 248 / 446 / 174 / 166.
    counts = Counter(official_hardness(x["sql"]) for x in _spider_dev())
    assert counts == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}


def test_approximation_matches_official_on_all_of_dev() -> None:
    rows = _spider_dev()
    same_components = sum(official_components(x["sql"]) == approx_components(x["query"]) for x in rows)
    same_level = sum(official_hardness(x["sql"]) == approx_hardness(x["query"]) for x in rows)
    assert same_level == len(rows)
    assert same_components == len(rows)
