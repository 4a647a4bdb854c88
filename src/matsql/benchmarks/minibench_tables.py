"""Rows for the minibench databases, generated from a data spec (``data/minibench_schemas.yaml``).

A table spec lists columns, each with a small generator (``serial``, ``choice``, ``unique``,
``int``, ``real``, ``date``, ``date_after``, ``ref``, ``lookup``, ``format``, ``by``, ``field``)
and an optional ``null_rate``. Generators may read other columns of the same row (generated
first, in dependency order) and columns of already generated parent tables. Everything draws
from one ``random.Random`` per table, so output depends only on the seed and the spec.
"""

from __future__ import annotations

import datetime as dt
import random
import string
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
Words = dict[str, list[Any]]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    gen: dict[str, Any]
    primary_key: bool = False
    references: str | None = None  # "table.column"
    null_rate: float = 0.0
    description: str = ""
    value_description: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    rows: int | None
    unique: tuple[tuple[str, ...], ...] = ()
    records: str | None = None  # a word list of dicts; row i draws its fields from record i
    description: str = ""

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.primary_key)


def parse_table(spec: dict[str, Any], where: str) -> TableSpec:
    """A table entry of the YAML spec; errors name the entry."""
    try:
        cols = tuple(
            ColumnSpec(
                name=c["name"],
                type=c["type"],
                gen=c["gen"],
                primary_key=bool(c.get("pk", False)),
                references=c.get("references"),
                null_rate=float(c.get("null_rate", 0.0)),
                description=c.get("description", ""),
                value_description=c.get("value_description", ""),
            )
            for c in spec["columns"]
        )
        return TableSpec(
            name=spec["name"],
            columns=cols,
            rows=spec.get("rows"),
            unique=tuple(tuple(u) for u in spec.get("unique", [])),
            records=spec.get("records"),
            description=spec.get("description", ""),
        )
    except KeyError as e:
        raise ValueError(f"{where}: table spec lacks {e}") from e


def _format_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def _deps(gen: dict[str, Any]) -> set[str]:
    """Columns of the same row a generator reads."""
    (kind, arg), *_ = gen.items()
    if kind == "date_after":
        return {arg["column"]}
    if kind == "lookup":
        return {arg["via"]}
    if kind == "ref" and isinstance(arg, dict) and arg.get("not_equal"):
        return {arg["not_equal"]}
    if kind == "by":
        return {arg["column"]} | {d for g in arg["cases"].values() for d in _deps(g)}
    if kind == "format":
        own = {f for f in _format_fields(arg["template"]) if f not in arg.get("vars", {})}
        return own | {d for g in arg.get("vars", {}).values() for d in _deps(g)}
    return set()


def column_order(table: TableSpec) -> list[ColumnSpec]:
    """Columns in an order where every generator's inputs come first (stable otherwise)."""
    pending = list(table.columns)
    names = {c.name for c in table.columns}
    done: list[ColumnSpec] = []
    while pending:
        ready = [c for c in pending if (_deps(c.gen) & names) <= {d.name for d in done}]
        if not ready:
            raise ValueError(
                f"table {table.name}: circular column dependencies among {[c.name for c in pending]}"
            )
        done.append(ready[0])
        pending.remove(ready[0])
    return done


class _Context:
    """What generators can see: word lists, parent tables, the current row and record."""

    def __init__(self, rng: random.Random, words: Words, tables: dict[str, list[Row]], table: TableSpec):
        self.rng, self.words, self.tables, self.table = rng, words, tables, table
        self.index: dict[tuple[str, str], dict[Any, Row]] = {}

    def parent_rows(self, ref: str) -> tuple[str, str, list[Row]]:
        t, _, c = ref.partition(".")
        if t not in self.tables:
            raise ValueError(f"table {self.table.name}: references {ref} but {t} is not generated yet")
        return t, c, self.tables[t]

    def parent_row(self, ref: str, key: Any) -> Row:
        t, c, rows = self.parent_rows(ref)
        if (t, c) not in self.index:
            self.index[(t, c)] = {r[c]: r for r in rows}
        return self.index[(t, c)][key]


def _words(ctx: _Context, arg: dict[str, Any]) -> list[Any]:
    if "values" in arg:
        return list(arg["values"])
    lists = arg["lists"] if "lists" in arg else [arg["list"]]
    return [w for name in lists for w in ctx.words[name]]


def _generate(
    gen: dict[str, Any], ctx: _Context, row: Row, i: int, record: dict[str, Any] | None, state: dict
) -> Any:
    (kind, arg), *_ = gen.items()
    rng = ctx.rng
    if kind == "serial":
        return int(arg) + i
    if kind == "choice":
        values = _words(ctx, arg)
        return rng.choices(values, weights=arg.get("weights"))[0]
    if kind == "unique":  # without replacement, in a seeded shuffled order
        key = id(gen)
        if key not in state:
            state[key] = rng.sample(_words(ctx, arg), len(_words(ctx, arg)))
        if i >= len(state[key]):
            raise ValueError(f"table {ctx.table.name}: unique list {arg} has fewer than {i + 1} values")
        return state[key][i]
    if kind == "int":
        return rng.randint(int(arg[0]), int(arg[1]))
    if kind == "real":
        return round(rng.uniform(float(arg[0]), float(arg[1])), int(arg[2]) if len(arg) > 2 else 2)
    if kind == "date":
        lo, hi = dt.date.fromisoformat(str(arg[0])), dt.date.fromisoformat(str(arg[1]))
        return (lo + dt.timedelta(days=rng.randint(0, (hi - lo).days))).isoformat()
    if kind == "date_after":
        base = dt.date.fromisoformat(row[arg["column"]])
        return (base + dt.timedelta(days=rng.randint(int(arg["days"][0]), int(arg["days"][1])))).isoformat()
    if kind == "ref":
        ref = arg if isinstance(arg, str) else arg["column"]
        _, c, rows = ctx.parent_rows(ref)
        values = [r[c] for r in rows if r[c] is not None]
        if isinstance(arg, dict) and arg.get("not_equal"):
            values = [v for v in values if v != row[arg["not_equal"]]]
        return rng.choice(values)
    if kind == "lookup":  # a column of the parent row that the FK column `via` points at
        col = next(c for c in ctx.table.columns if c.name == arg["via"])
        if col.references is None:
            raise ValueError(f"table {ctx.table.name}: lookup via {arg['via']}, which has no `references`")
        parent = ctx.parent_row(col.references, row[arg["via"]])
        return parent[arg["column"]]
    if kind == "format":
        values = dict(row)
        for name, sub in arg.get("vars", {}).items():
            values[name] = _generate(sub, ctx, row, i, record, state)
        text = arg["template"].format(**values)
        return text.lower() if arg.get("lower") else text
    if kind == "by":  # choose a generator by the value of another column
        case = row[arg["column"]]
        if case not in arg["cases"]:
            raise ValueError(f"table {ctx.table.name}: no case for {arg['column']} = {case!r}")
        return _generate(arg["cases"][case], ctx, row, i, record, state)
    if kind == "field":
        if record is None:
            raise ValueError(f"table {ctx.table.name}: `field` generator needs table-level `records`")
        return record[arg]
    raise ValueError(f"table {ctx.table.name}: unknown generator {kind!r}")


def generate_rows(
    table: TableSpec, words: Words, tables: dict[str, list[Row]], rng: random.Random
) -> list[Row]:
    """Rows of one table. Rows violating a uniqueness constraint are redrawn (bounded)."""
    records = None
    n = table.rows
    if table.records is not None:
        records = words[table.records]
        n = len(records) if n is None else min(n, len(records))
    if n is None:
        raise ValueError(f"table {table.name}: give `rows` or `records`")
    ctx = _Context(rng, words, tables, table)
    order = column_order(table)
    keys = [c.name for c in table.columns]
    constraints = list(table.unique) + ([table.primary_key] if table.primary_key else [])
    seen: list[set[tuple[Any, ...]]] = [set() for _ in constraints]
    state: dict = {}
    out: list[Row] = []
    for i in range(n):
        record = records[i] if records is not None else None
        for _attempt in range(100):
            row: Row = {}
            for col in order:
                value = _generate(col.gen, ctx, row, i, record, state)
                if col.null_rate and rng.random() < col.null_rate:
                    value = None
                row[col.name] = value
            tuples = [tuple(row[c] for c in cons) for cons in constraints]
            if all(t not in s for t, s in zip(tuples, seen, strict=True)):
                break
        else:
            raise ValueError(
                f"table {table.name}: could not draw a row satisfying {constraints} in 100 tries"
            )
        for t, s in zip(tuples, seen, strict=True):
            s.add(t)
        out.append({k: row[k] for k in keys})
    return out
