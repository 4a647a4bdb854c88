"""Minibench questions: templated families (``data/minibench_questions.yaml``) -> instances.

A family has question phrasings, a BIRD-style evidence template, a gold SQL template, a
difficulty and slots. Slots draw values from the generated database (``values: <SQL>``), from a
list (``choice``) or a range (``int``); later slots may use earlier ones. Placeholders:
``{slot}`` (display text), ``{slot.field}`` (a field of the slot's row or option) and
``{slot.sql}`` / ``{slot.field_sql}`` (the value as a quoted SQL literal).

An instance is kept only if its gold SQL runs and gives a non-degenerate result: at least one
row, not only NULLs, and not a lone 0 (a count of nothing). A family may add ``require``: SQL
that must return a true value (e.g. "the top row is not tied"), so every gold answer is
unambiguous under BIRD's set comparison.
"""

from __future__ import annotations

import random
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"\{(\w+)(?:\.(\w+))?\}")
DIFFICULTIES = ("simple", "moderate", "challenging")


@dataclass(frozen=True)
class Family:
    id: str
    db: str
    difficulty: str
    questions: tuple[str, ...]
    evidence: str
    sql: str
    slots: dict[str, dict[str, Any]]
    require: str | None = None
    n: int = 7


@dataclass(frozen=True)
class Instance:
    family: str
    db_id: str
    question: str
    evidence: str
    sql: str
    difficulty: str


def parse_family(spec: dict[str, Any], where: str) -> Family:
    try:
        questions = spec["question"] if isinstance(spec["question"], list) else [spec["question"]]
        fam = Family(
            id=spec["id"],
            db=spec["db"],
            difficulty=spec["difficulty"],
            questions=tuple(questions),
            evidence=spec.get("evidence", ""),
            sql=spec["sql"],
            slots=dict(spec.get("slots") or {}),
            require=spec.get("require"),
            n=int(spec.get("n", 7)),
        )
    except KeyError as e:
        raise ValueError(f"{where}: question family lacks {e}") from e
    if fam.difficulty not in DIFFICULTIES:
        raise ValueError(
            f"{where} ({fam.id}): difficulty must be one of {DIFFICULTIES}, got {fam.difficulty!r}"
        )
    return fam


def sql_literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def render(template: str, slots: dict[str, dict[str, Any]], where: str) -> str:
    """Fill ``{slot}``, ``{slot.field}``, ``{slot.sql}``, ``{slot.field_sql}`` placeholders."""

    def fill(m: re.Match[str]) -> str:
        name, field = m.group(1), m.group(2)
        if name not in slots:
            raise ValueError(f"{where}: unknown slot {{{name}}} in {template!r}")
        slot = slots[name]
        if field is None:
            return str(slot["text"])
        if field == "sql":
            return sql_literal(slot["value"])
        if field.endswith("_sql") and field[:-4] in slot:
            return sql_literal(slot[field[:-4]])
        if field not in slot:
            raise ValueError(f"{where}: slot {name!r} has no field {field!r} (fields: {sorted(slot)})")
        return str(slot[field])

    return _PLACEHOLDER.sub(fill, template)


def _draw_slot(
    spec: dict[str, Any],
    filled: dict[str, dict[str, Any]],
    conn: sqlite3.Connection,
    rng: random.Random,
    where: str,
) -> dict[str, Any]:
    if "values" in spec:
        cur = conn.execute(render(spec["values"], filled, where))
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        if not rows:
            raise LookupError("no values")
        row = dict(zip(names, rng.choice(rows), strict=True))
        first = row[names[0]]
        return {"value": first, "text": row.get("text", first), **row}
    if "choice" in spec:
        option = rng.choice(spec["choice"])
        option = option if isinstance(option, dict) else {"value": option}
        return {"text": option.get("text", option["value"]), **option}
    if "int" in spec:
        lo, hi = spec["int"]
        v = rng.randint(int(lo), int(hi))
        return {"value": v, "text": v}
    raise ValueError(f"{where}: slot needs `values`, `choice` or `int`, got {sorted(spec)}")


def informative(rows: list[tuple[Any, ...]]) -> bool:
    """Non-empty, not all NULL, and not a single 0 (an empty count or sum)."""
    if not rows or all(v is None for r in rows for v in r):
        return False
    return not (len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] == 0)


def instantiate(
    fam: Family, conn: sqlite3.Connection, rng: random.Random, max_tries: int = 80
) -> list[Instance]:
    """Up to ``fam.n`` distinct instances (by gold SQL) whose answers are informative."""
    out: dict[str, Instance] = {}
    where = f"question family {fam.id}"
    for _ in range(max_tries):
        if len(out) >= fam.n:
            break
        filled: dict[str, dict[str, Any]] = {}
        try:
            for name, spec in fam.slots.items():
                filled[name] = _draw_slot(spec, filled, conn, rng, where)
        except LookupError:
            continue
        phrasing = rng.choice(fam.questions)
        sql = " ".join(render(fam.sql, filled, where).split())
        if sql in out:
            continue
        try:
            rows = conn.execute(sql).fetchall()
            ok = informative(rows) and (
                fam.require is None or bool(conn.execute(render(fam.require, filled, where)).fetchone()[0])
            )
        except sqlite3.Error as e:
            raise ValueError(f"{where}: gold SQL fails on {fam.db}: {e}\n{sql}") from e
        if ok:
            out[sql] = Instance(
                family=fam.id,
                db_id=fam.db,
                question=render(phrasing, filled, where),
                evidence=render(fam.evidence, filled, where),
                sql=sql,
                difficulty=fam.difficulty,
            )
        if not fam.slots:
            break
    return list(out.values())
