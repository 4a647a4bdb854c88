"""The parts of a SQL query that the validators talk about, extracted with sqlglot.

Each part is a list of :class:`Item`: ``text`` is how the query writes it (table aliases
replaced by table names, so a gold query's text can be shown without its private aliases) and
``key`` is what comparisons use (no table qualifiers, lower-case identifiers, ``ASC`` dropped,
operands of symmetric operators sorted, output aliases expanded). Two queries that differ only
in aliases, case or operand order have equal keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

_SYMMETRIC = (exp.EQ, exp.NEQ)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)


@dataclass(frozen=True)
class Item:
    key: str
    text: str
    columns: frozenset[str] = frozenset()  # column names it reads (for pairing changed conditions)


@dataclass
class Parts:
    distinct: bool = False
    select: list[Item] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    joins: list[Item] = field(default_factory=list)  # ON conditions, split on AND
    where: list[Item] = field(default_factory=list)  # top-level AND conjuncts
    group_by: list[Item] = field(default_factory=list)
    having: list[Item] = field(default_factory=list)
    order_by: list[Item] = field(default_factory=list)
    limit: str | None = None
    set_op: str | None = None  # "union" / "intersect" / "except" when the query combines selects


def _parse(sql: str | None) -> exp.Expression | None:
    """sqlglot's tree of ``sql`` (SQLite dialect); None when empty or unparsable."""
    if not sql or not sql.strip():
        return None
    try:
        return sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError):
        return None


def parse_parts(sql: str | None) -> Parts | None:
    """Parts of the (first) SELECT of ``sql``; None when sqlglot cannot parse it."""
    tree = _parse(sql)
    if tree is None:
        return None
    set_op = None
    while isinstance(tree, exp.SetOperation):
        set_op = set_op or type(tree).__name__.lower()
        tree = tree.this
    if isinstance(tree, exp.Subquery):
        tree = tree.unnest()
    if not isinstance(tree, exp.Select):
        return None
    return _select_parts(tree, set_op)


def _select_parts(sel: exp.Select, set_op: str | None) -> Parts:
    aliases = _table_aliases(sel)
    outputs = {
        e.alias.lower(): e.this for e in sel.expressions if isinstance(e, exp.Alias) and e.alias
    }  # ORDER BY / HAVING may name output columns
    parts = Parts(distinct=bool(sel.args.get("distinct")), set_op=set_op)
    parts.select = [_item(e.this if isinstance(e, exp.Alias) else e, aliases, {}) for e in sel.expressions]
    from_ = sel.args.get("from_") or sel.args.get("from")
    sources = [from_.this] if from_ is not None else []
    for j in sel.args.get("joins") or []:
        sources.append(j.this)
        on = j.args.get("on")
        if on is not None:
            parts.joins += [_item(c, aliases, {}) for c in _conjuncts(on)]
    for s in sources:
        if isinstance(s, exp.Table) and s.name.lower() not in parts.tables:
            parts.tables.append(s.name.lower())
    where = sel.args.get("where")
    if where is not None:
        parts.where = [_item(c, aliases, {}) for c in _conjuncts(where.this)]
    group = sel.args.get("group")
    if group is not None:
        parts.group_by = [_item(e, aliases, outputs) for e in group.expressions]
    having = sel.args.get("having")
    if having is not None:
        parts.having = [_item(c, aliases, outputs) for c in _conjuncts(having.this)]
    order = sel.args.get("order")
    if order is not None:
        parts.order_by = [_ordered(o, aliases, outputs) for o in order.expressions]
    limit = sel.args.get("limit")
    if limit is not None:
        value = limit.args.get("expression") or limit.this
        parts.limit = value.sql(dialect="sqlite") if value is not None else None
    return parts


def _table_aliases(sel: exp.Select) -> dict[str, str]:
    out = {}
    for t in sel.find_all(exp.Table):
        if t.alias:
            out[t.alias.lower()] = t.name
    return out


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    node = node.unnest() if isinstance(node, exp.Paren) else node
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _display(
    node: exp.Expression, aliases: dict[str, str], outputs: dict[str, exp.Expression]
) -> exp.Expression:
    node = node.copy()
    for col in list(node.find_all(exp.Column)):
        if not col.table and col.name.lower() in outputs:
            new = outputs[col.name.lower()].copy()
            node = new if col is node else node
            col.replace(new)
    for col in node.find_all(exp.Column):
        if col.table and col.table.lower() in aliases:
            col.set("table", exp.to_identifier(aliases[col.table.lower()]))
    for cmp in node.find_all(*_COMPARISONS):
        for side in ("this", "expression"):
            operand = cmp.args.get(side)
            # SQLite reads an unknown double-quoted name as a string; compare it as one
            if isinstance(operand, exp.Column) and not operand.table and operand.this.quoted:
                other = cmp.args.get("expression" if side == "this" else "this")
                if isinstance(other, exp.Column):
                    operand.replace(exp.Literal.string(operand.name))
    return node


def _key(node: exp.Expression) -> str:
    node = node.copy()
    for col in node.find_all(exp.Column):
        col.set("table", None)
    for ident in node.find_all(exp.Identifier):
        ident.set("this", ident.this.lower())
        ident.set("quoted", False)
    for cmp in list(node.find_all(*_SYMMETRIC)):
        a, b = cmp.this.sql(dialect="sqlite"), cmp.expression.sql(dialect="sqlite")
        if a > b:
            left, right = cmp.this, cmp.expression
            cmp.set("this", right)
            cmp.set("expression", left)
    return node.sql(dialect="sqlite")


def _item(node: exp.Expression, aliases: dict[str, str], outputs: dict[str, exp.Expression]) -> Item:
    shown = _display(node, aliases, outputs)
    cols = frozenset(c.name.lower() for c in shown.find_all(exp.Column))
    return Item(key=_key(shown), text=shown.sql(dialect="sqlite"), columns=cols)


def _ordered(o: exp.Expression, aliases: dict[str, str], outputs: dict[str, exp.Expression]) -> Item:
    if isinstance(o, exp.Ordered):
        inner = _item(o.this, aliases, outputs)
        suffix = " DESC" if o.args.get("desc") else ""
        return Item(inner.key + suffix, inner.text + suffix, inner.columns)
    return _item(o, aliases, outputs)


def aggregate_of(item: Item) -> tuple[str | None, str]:
    """(aggregate function name or None, argument key) of a select item, from its key."""
    try:
        node = sqlglot.parse_one(item.key, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, ValueError):
        return None, item.key
    if isinstance(node, exp.AggFunc):
        arg = node.this
        return type(node).__name__.lower(), arg.sql(dialect="sqlite") if arg is not None else ""
    return None, item.key


def tables_and_columns(sql: str | None) -> dict[str, list[str]] | None:
    """Every table the query reads (subqueries included) -> the columns it uses from it, in
    first-appearance order. Unqualified columns go to the only table when there is one, else
    to ``""`` (their table is ambiguous without the schema). None when unparsable."""
    tree = _parse(sql)
    if tree is None:
        return None
    aliases: dict[str, str] = {}
    out: dict[str, list[str]] = {}
    for t in tree.find_all(exp.Table):
        out.setdefault(t.name.lower(), [])
        if t.alias:
            aliases[t.alias.lower()] = t.name.lower()
    only = next(iter(out)) if len(out) == 1 else ""
    outputs = {a.alias.lower() for a in tree.find_all(exp.Alias) if a.alias}
    for col in tree.find_all(exp.Column):
        name = col.name.lower()
        if not name or (not col.table and name in outputs):
            continue
        table = aliases.get(col.table.lower(), col.table.lower()) if col.table else only
        cols = out.setdefault(table, [])
        if name not in cols:
            cols.append(name)
    if "" in out and not out[""]:
        del out[""]
    return out
