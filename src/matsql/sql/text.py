"""Small SQL text utilities (sqlglot, SQLite dialect) for cleaning and deduplicating model output."""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

_TRAILING = re.compile(r"[\s;]+$")
_SPACES = re.compile(r"\s+")


def strip_sql(text: str) -> str:
    """Drop surrounding whitespace and trailing semicolons (``"SELECT 1 ;\\n"`` -> ``"SELECT 1"``)."""
    return _TRAILING.sub("", text.strip())


def _parse(sql: str) -> list[exp.Expression] | None:
    try:
        return [e for e in sqlglot.parse(strip_sql(sql), read="sqlite") if e is not None]
    except SqlglotError:
        return None


def normalize_sql(sql: str) -> str:
    """A canonical text for deduplicating candidates: keywords upper-cased, unquoted identifiers
    lower-cased (SQLite identifiers are case-insensitive), whitespace and aliases' spacing
    unified, string literals untouched. Text sqlglot cannot parse falls back to whitespace
    collapsing, so two spellings of the same broken query still collide."""
    parsed = _parse(sql)
    if not parsed:
        return _SPACES.sub(" ", strip_sql(sql))
    return "; ".join(e.sql(dialect="sqlite", normalize=True) for e in parsed)


def is_select(sql: str) -> bool:
    """One statement, and a query (SELECT, a set operation or a WITH ... SELECT)."""
    parsed = _parse(sql)
    return parsed is not None and len(parsed) == 1 and isinstance(parsed[0], exp.Query)
