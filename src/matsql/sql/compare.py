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


def _column_match(gold: list[tuple[Any, ...]], pred: list[tuple[Any, ...]], order_matters: bool) -> bool:
    """Is there a column permutation ``perm`` with ``[row[perm] for row in pred]`` equal to
    ``gold`` (as lists when ``order_matters``, else as multisets)? This is the loop of the
    official ``result_eq`` over ``get_constraint_permutation``, which tries permutations one by
    one (a right answer with 10 equal columns took 76 s). Here, a backtracking search over
    gold columns with three sound prunings, so the verdict is the official one:

    - pred column j can stand for gold column i only if the two columns hold the same values
      (in order when order matters, else as multisets): a per-column signature;
    - two pred columns with identical values row by row are interchangeable: only the first
      untried one of each kind is tried at each level;
    - a partial assignment must already match on the columns assigned so far (the projection of
      equal results is equal), checked incrementally on row keys.
    """
    n = len(gold[0])
    gold_cols = [tuple(row[i] for row in gold) for i in range(n)]
    pred_cols = [tuple(row[j] for row in pred) for j in range(n)]
    if order_matters:
        sig_g = gold_cols
        sig_p = pred_cols
    else:
        sig_g = [Counter(c) for c in gold_cols]
        sig_p = [Counter(c) for c in pred_cols]
    allowed = [[j for j in range(n) if sig_p[j] == sig_g[i]] for i in range(n)]
    if any(not a for a in allowed):
        return False
    # most constrained gold columns first
    order = sorted(range(n), key=lambda i: len(allowed[i]))
    used = [False] * n
    n_rows = len(gold)

    def extend(depth: int, gkeys: list[tuple[Any, ...]], pkeys: list[tuple[Any, ...]]) -> bool:
        if depth == n:
            return True
        i = order[depth]
        tried: set[tuple[Any, ...]] = set()
        for j in allowed[i]:
            if used[j] or pred_cols[j] in tried:
                continue
            tried.add(pred_cols[j])
            g2 = [gkeys[r] + (gold_cols[i][r],) for r in range(n_rows)]
            p2 = [pkeys[r] + (pred_cols[j][r],) for r in range(n_rows)]
            if (g2 == p2) if order_matters else (Counter(g2) == Counter(p2)):
                used[j] = True
                if extend(depth + 1, g2, p2):
                    return True
                used[j] = False
        return False

    return extend(0, [()] * n_rows, [()] * n_rows)


def spider_result_eq(
    result1: list[tuple[Any, ...]], result2: list[tuple[Any, ...]], order_matters: bool
) -> bool:
    """test-suite-sql-eval's ``result_eq(gold, pred, order_matters)``, same verdicts, without
    trying column permutations one by one (see :func:`_column_match`)."""
    if len(result1) == 0 and len(result2) == 0:
        return True
    if len(result1) != len(result2):
        return False
    n_cols = len(result1[0])
    if len(result2[0]) != n_cols:
        return False
    if not _quick_reject_passes(result1, result2, order_matters):
        return False
    if n_cols == 1:
        return result1 == result2 if order_matters else Counter(result1) == Counter(result2)
    return _column_match(result1, result2, order_matters)


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
