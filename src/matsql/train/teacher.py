"""Rule-based validator teacher: paper-format critiques from a candidate, the gold query and
both execution results.

The verdict is execution-grounded: ``correct`` iff the candidate ran and its result equals the
gold result (equal ``rows_digest``, i.e. BIRD EX). The text explains it by the first structural
difference sqlglot finds between candidate and gold, in the validator's own area: the SELECT
list for ``val-sel``, tables/joins/WHERE/GROUP BY/HAVING/ORDER BY/LIMIT for ``val-cond``. A
correct candidate that differs in form is described as equivalent; a wrong candidate with no
difference in the validator's area gets a critique that says so and still concludes
``incorrect`` (that is what independent labelling rewards). Phrases live in
``templates/teacher.yaml``; the format is :func:`matsql.agents.validator.render_target`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from matsql.agents.validator import render_target
from matsql.records import ExecInfo
from matsql.train.sqlparts import Item, Parts, aggregate_of, parse_parts

AGENTS = ("val-sel", "val-cond")


@dataclass(frozen=True)
class TeacherCritique:
    agent: str
    text: str  # the continuation after the validator prefix, ending in "Conclude: <verdict>"
    verdict: str  # "correct" | "incorrect"
    reason: str  # the rule that produced the text (e.g. "where_missing", "exec_error", "right")


@dataclass(frozen=True)
class Diff:
    reason: str
    gold: str = ""
    cand: str = ""


@cache
def phrases() -> dict[str, Any]:
    path = resources.files("matsql.train").joinpath("templates", "teacher.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def verdict_of(cand_exec: ExecInfo | None, gold_exec: ExecInfo) -> str:
    same = (
        cand_exec is not None
        and cand_exec.ok
        and cand_exec.rows_digest is not None
        and cand_exec.rows_digest == gold_exec.rows_digest
    )
    return "correct" if same else "incorrect"


def _code(items: list[str]) -> str:
    quoted = [f"`{x}`" for x in items]
    if not quoted:
        return "nothing"
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _texts(items: list[Item], keys: list[str] | set[str] | None = None) -> list[str]:
    return [i.text for i in items if keys is None or i.key in keys]


def _set_op_diff(g: Parts, c: Parts) -> Diff | None:
    if g.set_op == c.set_op:
        return None
    names = phrases()["common"]["set_ops"]
    return Diff("set_op", names[g.set_op or "none"], names[c.set_op or "none"])


def select_diffs(g: Parts, c: Parts) -> list[Diff]:
    """SELECT-list differences, most important first."""
    out = []
    if (d := _set_op_diff(g, c)) is not None:
        out.append(d)
    gk, ck = [i.key for i in g.select], [i.key for i in c.select]
    missing = [i for i in g.select if i.key not in ck]
    extra = [i for i in c.select if i.key not in gk]
    if missing and extra:
        reason = "changed"
        if len(missing) == 1 and len(extra) == 1:
            (ga, garg), (ca, carg) = aggregate_of(missing[0]), aggregate_of(extra[0])
            if (ga or ca) and ga != ca and (garg == carg or "*" in (garg, carg)):
                reason = "aggregate"
        out.append(Diff(reason, _code(_texts(missing)), _code(_texts(extra))))
    elif missing:
        out.append(Diff("missing", _code(_texts(missing))))
    elif extra:
        out.append(Diff("extra", cand=_code(_texts(extra))))
    elif gk != ck:
        out.append(Diff("order", _code(_texts(g.select)), _code(_texts(c.select))))
    if g.distinct and not c.distinct:
        out.append(Diff("distinct_missing", "DISTINCT", "no DISTINCT"))
    elif c.distinct and not g.distinct:
        out.append(Diff("distinct_extra", "no DISTINCT", "DISTINCT"))
    return out


def _paired(name: str, gold: list[Item], cand: list[Item]) -> Diff | None:
    """Missing/extra items; a missing and an extra item on the same columns (or the only
    missing and the only extra one) is a change."""
    ck, gk = {i.key for i in cand}, {i.key for i in gold}
    missing = [i for i in gold if i.key not in ck]
    extra = [i for i in cand if i.key not in gk]
    for m in missing:
        for e in extra:
            if m.columns & e.columns:
                return Diff(f"{name}_changed", _code([m.text]), _code([e.text]))
    if (missing and extra and name in ("join", "group")) or (len(missing) == 1 and len(extra) == 1):
        return Diff(f"{name}_changed", _code(_texts(missing)), _code(_texts(extra)))
    if missing:
        return Diff(f"{name}_missing", _code(_texts(missing)))
    if extra:
        return Diff(f"{name}_extra", cand=_code(_texts(extra)))
    return None


def condition_diffs(g: Parts, c: Parts) -> list[Diff]:
    """Differences in tables, joins, WHERE, GROUP BY, HAVING, ORDER BY, LIMIT, in that order."""
    out = []
    if (d := _set_op_diff(g, c)) is not None:
        out.append(d)
    missing = [t for t in g.tables if t not in c.tables]
    extra = [t for t in c.tables if t not in g.tables]
    if missing:
        out.append(Diff("tables_missing", _code(missing)))
    elif extra:
        out.append(Diff("tables_extra", cand=_code(extra)))
    for name, gi, ci in (
        ("join", g.joins, c.joins),
        ("where", g.where, c.where),
        ("group", g.group_by, c.group_by),
        ("having", g.having, c.having),
    ):
        if (d := _paired(name, gi, ci)) is not None:
            out.append(d)
    if [i.key for i in g.order_by] != [i.key for i in c.order_by]:
        reason = (
            "order_changed"
            if g.order_by and c.order_by
            else ("order_missing" if g.order_by else "order_extra")
        )
        out.append(Diff(reason, _code(_texts(g.order_by)), _code(_texts(c.order_by))))
    if g.limit != c.limit:
        reason = "limit_changed" if g.limit and c.limit else ("limit_missing" if g.limit else "limit_extra")
        out.append(Diff(reason, g.limit or "", c.limit or ""))
    return out


def _opening(agent: str, g: Parts, c: Parts) -> str:
    p = phrases()[agent]
    if agent == "val-sel":
        return p["opening"].format(gold=_code(_texts(g.select)), cand=_code(_texts(c.select)))
    return p["opening"].format(cand=_code(c.tables))


def critique(
    agent: str,
    cand_sql: str | None,
    cand_exec: ExecInfo | None,
    gold_sql: str,
    gold_exec: ExecInfo | None,
) -> TeacherCritique | None:
    """The teacher's critique for one validator, or None when gold did not run (no ground truth)."""
    if agent not in AGENTS:
        raise ValueError(f"unknown validator {agent!r}; expected one of {AGENTS}")
    if gold_exec is None or not gold_exec.ok:
        return None
    verdict = verdict_of(cand_exec, gold_exec)
    common, p = phrases()["common"], phrases()[agent]

    def done(body: str, reason: str) -> TeacherCritique:
        return TeacherCritique(agent, render_target(body, verdict), verdict, reason)

    if not cand_sql or not cand_sql.strip() or (cand_exec is not None and cand_exec.status == "no_sql"):
        return done(common["no_sql"], "no_sql")
    if cand_exec is not None and cand_exec.status == "timeout":
        return done(common["timeout"], "timeout")
    if cand_exec is None or cand_exec.status != "ok":
        error = (cand_exec.error if cand_exec else None) or "not executed"
        return done(common["exec_error"].format(error=error.strip().splitlines()[0][:200]), "exec_error")
    g, c = parse_parts(gold_sql), parse_parts(cand_sql)
    if c is None or g is None:
        if verdict == "correct":
            return done(p["right"], "right")
        return done(common["unparsable"] if c is None else p["same_but_wrong"], "unparsable")
    diffs = select_diffs(g, c) if agent == "val-sel" else condition_diffs(g, c)
    opening = _opening(agent, g, c)
    if verdict == "correct":
        if not diffs:
            return done(f"{opening} {p['right']}", "right")
        d = diffs[0]
        detail = f"{d.cand or 'no ' + d.gold} rather than {d.gold or 'no ' + d.cand}"
        return done(f"{opening} {p['equivalent'].format(detail=detail)}", f"equivalent:{d.reason}")
    if not diffs:
        body, reason = f"{opening} {p['same_but_wrong']}", "same_but_wrong"
    else:
        d = diffs[0]
        body, reason = f"{opening} {p[d.reason].format(gold=d.gold, cand=d.cand)}", d.reason
    if agent == "val-cond" and cand_exec.n_rows == 0 and (gold_exec.n_rows or 0) > 0:
        body += " " + common["empty_result"]
    return done(body, reason)


def critiques(
    cand_sql: str | None, cand_exec: ExecInfo | None, gold_sql: str, gold_exec: ExecInfo | None
) -> dict[str, TeacherCritique]:
    """Both validators' teacher critiques ({} when gold did not run)."""
    out = {}
    for agent in AGENTS:
        tc = critique(agent, cand_sql, cand_exec, gold_sql, gold_exec)
        if tc is not None:
            out[agent] = tc
    return out
