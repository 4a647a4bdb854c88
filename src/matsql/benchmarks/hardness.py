"""Spider hardness levels (easy / medium / hard / extra).

Spider has no difficulty field; its evaluation script derives one by counting SQL components
of the *parsed* query (the ``sql`` field of ``dev.json``). ``official_hardness`` is a faithful
port of that rule (quirks included, e.g. NOT conditions and HAVING connectives count as
aggregates), so it reproduces the published dev split exactly. ``approx_hardness`` applies the
same counting rule to a sqlglot parse, for files without the parsed field (the Spider-Syn copy of
the train set); it is an approximation and is labelled so (``APPROX_SOURCE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp

OFFICIAL_SOURCE = "spider-hardness (official rule on the parsed `sql` field)"
APPROX_SOURCE = "spider-hardness-approx (official counting rule on a sqlglot parse; not official labels)"

_LIKE_OP = 9  # WHERE_OPS.index("like") in Spider's process_sql.py


@dataclass(frozen=True)
class Components:
    """The three counts Spider's rule looks at."""

    comp1: int  # WHERE, GROUP BY, ORDER BY, LIMIT, extra tables, OR, LIKE
    comp2: int  # nested queries in conditions, INTERSECT / UNION / EXCEPT
    others: int  # >1 aggregate, >1 select column, >1 where condition, >1 group-by column


def level(c: Components) -> str:
    """Spider's ``Evaluator.eval_hardness`` decision rule."""
    if c.comp1 <= 1 and c.others == 0 and c.comp2 == 0:
        return "easy"
    if (c.others <= 2 and c.comp1 <= 1 and c.comp2 == 0) or (c.comp1 <= 2 and c.others < 2 and c.comp2 == 0):
        return "medium"
    if (
        (c.others > 2 and c.comp1 <= 2 and c.comp2 == 0)
        or (2 < c.comp1 <= 3 and c.others <= 2 and c.comp2 == 0)
        or (c.comp1 <= 1 and c.others == 0 and c.comp2 <= 1)
    ):
        return "hard"
    return "extra"


# ---------------------------------------------------------------- official (parsed `sql` field)


def _has_agg(unit: Any) -> bool:
    return unit[0] != 0  # AGG_OPS.index("none") == 0; strings ("and"/"or") count, as upstream


def _count_agg(units: list[Any]) -> int:
    return sum(1 for u in units if _has_agg(u))


def official_components(sql: dict[str, Any]) -> Components:
    """Component counts of a Spider parsed query (port of evaluation.py)."""
    conds = sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]
    connectives = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    comp1 = sum(1 for key in ("where", "groupBy", "orderBy") if sql[key])
    comp1 += sql["limit"] is not None
    comp1 += max(len(sql["from"]["table_units"]) - 1, 0)
    comp1 += sum(1 for t in connectives if t == "or")
    comp1 += sum(1 for c in conds if c[1] == _LIKE_OP)

    nested = sum(isinstance(c[3], dict) + isinstance(c[4], dict) for c in conds)
    nested += sum(sql[key] is not None for key in ("intersect", "except", "union"))

    agg = _count_agg(sql["select"][1]) + _count_agg(sql["where"][::2]) + _count_agg(sql["groupBy"])
    if sql["orderBy"]:
        units = [u[1] for u in sql["orderBy"][1] if u[1]] + [u[2] for u in sql["orderBy"][1] if u[2]]
        agg += _count_agg(units)
    agg += _count_agg(sql["having"])
    others = (agg > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1) + (len(sql["groupBy"]) > 1)
    return Components(int(comp1), int(nested), int(others))


def official_hardness(sql: dict[str, Any]) -> str:
    return level(official_components(sql))


# ---------------------------------------------------------------- approximation (sqlglot parse)


def _flatten(node: exp.Expression | None) -> tuple[list[exp.Expression], list[str]]:
    """Leaf conditions and and/or connectives of a boolean expression, left to right."""
    if node is None:
        return [], []
    while isinstance(node, exp.Paren) and isinstance(node.this, exp.Connector):
        node = node.this
    if isinstance(node, exp.Connector):
        left, lc = _flatten(node.left)
        right, rc = _flatten(node.right)
        return left + right, [*lc, "or" if isinstance(node, exp.Or) else "and", *rc]
    return [node], []


def _leaf_parts(leaf: exp.Expression) -> tuple[bool, exp.Expression]:
    negated = isinstance(leaf, exp.Not)
    return negated, (leaf.this if negated else leaf)


def _is_subquery(node: Any) -> bool:
    return isinstance(node, exp.Subquery | exp.Select | exp.SetOperation)


def _nested_operands(cond: exp.Expression) -> int:
    if isinstance(cond, exp.In):
        return int(cond.args.get("query") is not None) + int(_is_subquery(cond.this))
    if isinstance(cond, exp.Between):
        return sum(_is_subquery(cond.args.get(k)) for k in ("this", "low", "high"))
    return sum(_is_subquery(v) for v in cond.args.values() if isinstance(v, exp.Expression))


def _agg_units(node: exp.Expression | None) -> int:
    """Aggregates Spider sees in one val_unit: the whole expression or each side of + - * /."""
    if node is None:
        return 0
    node = node.unalias() if isinstance(node, exp.Alias) else node
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        return _agg_units(node.left) + _agg_units(node.right)
    return int(isinstance(node, exp.AggFunc))


def approx_components(query: str) -> Components:
    """Spider's component counts computed on a sqlglot (SQLite dialect) parse."""
    tree = sqlglot.parse_one(query, read="sqlite")
    comp2 = 0
    if isinstance(tree, exp.SetOperation):
        comp2 += 1
        while isinstance(tree, exp.SetOperation):
            tree = tree.left
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    if not isinstance(tree, exp.Select):
        raise ValueError(f"not a SELECT query: {query!r}")

    where = tree.args.get("where")
    having = tree.args.get("having")
    group = tree.args.get("group")
    order = tree.args.get("order")
    joins = tree.args.get("joins") or []
    w_leaves, w_conn = _flatten(where.this if where else None)
    h_leaves, h_conn = _flatten(having.this if having else None)
    j_leaves = [leaf for j in joins for leaf in _flatten(j.args.get("on"))[0]]

    comp1 = int(where is not None) + int(group is not None) + int(order is not None)
    comp1 += int(tree.args.get("limit") is not None)
    comp1 += len(joins)
    # Spider's parser reads ON conditions as AND-only, so an OR there is not counted upstream.
    comp1 += sum(1 for c in w_conn + h_conn if c == "or")
    leaves = [_leaf_parts(x) for x in j_leaves + w_leaves + h_leaves]
    comp1 += sum(1 for _, c in leaves if isinstance(c, exp.Like | exp.ILike))
    comp2 += sum(_nested_operands(c) for _, c in leaves)

    agg = sum(_agg_units(e) for e in tree.expressions)
    agg += sum(1 for x in w_leaves if isinstance(x, exp.Not))  # upstream quirk: not_op read as agg
    agg += sum(_agg_units(e) for e in (group.expressions if group else []))
    agg += sum(_agg_units(o.this) for o in (order.expressions if order else []))
    agg += sum(1 for x in h_leaves if isinstance(x, exp.Not)) + len(h_conn)  # upstream quirk
    n_where = len(w_leaves) + len(w_conn)
    others = int(agg > 1) + int(len(tree.expressions) > 1) + int(n_where > 1)
    others += int(group is not None and len(group.expressions) > 1)
    return Components(comp1, comp2, others)


def approx_hardness(query: str) -> str:
    """Spider hardness from SQL text; ``unknown`` if sqlglot cannot parse it."""
    try:
        return level(approx_components(query))
    except (sqlglot.errors.SqlglotError, ValueError):
        return "unknown"
