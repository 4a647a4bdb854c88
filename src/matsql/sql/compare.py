"""Execution-result comparison (EX) and an order/duplicate-insensitive result digest.

Two modes (DESIGN.md "Semantics that must be exact"):

- ``"bird"``: BIRD's official ``evaluation.py`` rule, ``set(predicted_res) == set(ground_truth_res)``:
  row order and duplicate rows are ignored, column order matters. Python equality applies, so
  ``1 == 1.0 == True`` and NULL (``None``) equals only NULL.
- ``"spider"``: ``result_eq`` of test-suite-sql-eval (the official Spider execution metric): the
  same number of rows, bag (multiset) semantics, a column permutation of the prediction may
  match, and row order matters only when ``order_matters`` (the official script sets it when the
  gold SQL contains ``order by``; see :func:`spider_order_matters`). Its text-level
  post-processing (``remove_distinct``, value plugging) is not applied here: this module
  compares results, not SQL.

Failures are the caller's job: in both benchmarks a prediction whose execution errored or timed
out is wrong (and so is everything when the gold query fails), so call these functions only with
rows of two successful executions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import product
from typing import Any, Literal

Mode = Literal["bird", "spider"]
MODES: tuple[str, ...] = ("bird", "spider")

Row = Sequence[Any]


def ex_match(
    pred_rows: Sequence[Row], gold_rows: Sequence[Row], mode: str = "bird", *, order_matters: bool = False
) -> bool:
    """Is the predicted result equal to the gold result under the benchmark's rule?

    ``order_matters`` is used by the "spider" mode only (BIRD never looks at row order).
    """
    if mode == "bird":
        return set(map(tuple, pred_rows)) == set(map(tuple, gold_rows))
    if mode == "spider":
        return spider_result_eq(
            [tuple(r) for r in gold_rows], [tuple(r) for r in pred_rows], order_matters=order_matters
        )
    raise ValueError(f"unknown EX mode {mode!r}; expected one of {MODES}")


def spider_order_matters(gold_sql: str) -> bool:
    """The official Spider rule: row order counts iff the gold query has ORDER BY."""
    return "order by" in gold_sql.lower()


# --- Spider (test-suite-sql-eval exec_eval.result_eq), made deterministic -----------------------


def _unorder_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def _quick_reject_passes(r1: list[tuple[Any, ...]], r2: list[tuple[Any, ...]], order_matters: bool) -> bool:
    s1 = [_unorder_row(r) for r in r1]
    s2 = [_unorder_row(r) for r in r2]
    return s1 == s2 if order_matters else set(s1) == set(s2)


def _candidate_permutations(
    r1: list[tuple[Any, ...]], r2: list[tuple[Any, ...]]
) -> Iterable[tuple[int, ...]]:
    """Column permutations worth trying. The official code prunes with 20 *random* rows of r2 for
    more than 3 columns; pruning is sound (it only drops permutations that cannot match), so
    pruning with every row gives the same verdict, deterministically."""
    n = len(r1[0])
    if n <= 3:
        return product(range(n), repeat=n)
    col_sets = [{row[i] for row in r1} for i in range(n)]
    allowed = [[j for j in range(n) if all(row[j] in col_sets[i] for row in r2)] for i in range(n)]
    return product(*allowed)


def spider_result_eq(
    result1: list[tuple[Any, ...]], result2: list[tuple[Any, ...]], order_matters: bool
) -> bool:
    """test-suite-sql-eval's ``result_eq(gold, pred, order_matters)``."""
    if len(result1) == 0 and len(result2) == 0:
        return True
    if len(result1) != len(result2):
        return False
    n_cols = len(result1[0])
    if len(result2[0]) != n_cols:
        return False
    if not _quick_reject_passes(result1, result2, order_matters):
        return False
    for perm in _candidate_permutations(result1, result2):
        if len(set(perm)) != len(perm):
            continue
        r2p = result2 if n_cols == 1 else [tuple(row[i] for i in perm) for row in result2]
        if order_matters:
            if result1 == r2p:
                return True
        elif set(result1) == set(r2p) and Counter(result1) == Counter(r2p):
            return True
    return False


# --- digest ---------------------------------------------------------------------------------


def _canon(v: Any) -> list[str]:
    """A type-tagged encoding with Python's equality classes: 1, 1.0 and True share one code."""
    if v is None:
        return ["n"]
    if isinstance(v, bool | int):
        return ["i", str(int(v))]
    if isinstance(v, float):
        if v.is_integer():  # exact: int(2.0**60) == 2**60; -0.0 -> 0
            return ["i", str(int(v))]
        return ["f", repr(v)]  # shortest round-trip repr: distinct floats, distinct codes
    if isinstance(v, str):
        return ["s", v]
    if isinstance(v, bytes | bytearray | memoryview):
        return ["b", bytes(v).hex()]
    raise TypeError(f"rows_digest: unsupported value type {type(v).__name__} ({v!r})")


def rows_digest(rows: Iterable[Row]) -> str:
    """Order- and duplicate-insensitive digest: ``rows_digest(a) == rows_digest(b)`` iff
    ``set(a) == set(b)`` (the BIRD rule), for the value types SQLite returns (None, int, float,
    str, bytes; SQLite never returns NaN). 128-bit sha256 prefix."""
    codes = sorted({json.dumps([_canon(v) for v in row]) for row in rows})
    return hashlib.sha256("\n".join(codes).encode("ascii")).hexdigest()[:32]
