"""SQL text utilities: stripping, normalisation for dedup, SELECT detection (fixture-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matsql.sql import is_select, normalize_sql, strip_sql

CASES = yaml.safe_load((Path(__file__).parent / "fixtures/sql/text_cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES["strip"], ids=lambda c: repr(c["text"]))
def test_strip_sql(case: dict) -> None:
    assert strip_sql(case["text"]) == case["out"]


@pytest.mark.parametrize("case", CASES["normalize"], ids=lambda c: c["a"][:40])
def test_normalize_sql_merges_only_equivalent_spellings(case: dict) -> None:
    assert (normalize_sql(case["a"]) == normalize_sql(case["b"])) is case["same"]


@pytest.mark.parametrize("case", CASES["is_select"], ids=lambda c: repr(c["sql"][:40]))
def test_is_select(case: dict) -> None:
    assert is_select(case["sql"]) is case["out"]
