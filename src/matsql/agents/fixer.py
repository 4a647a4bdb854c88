"""Fixer: candidate SQL + execution response + critiques -> ``FIXED SQL:`` block.

The critiques are the actual validator texts (E1: the fixer must read them), rendered in a
fixed validator order so a prompt is a pure function of its inputs.
"""

from __future__ import annotations

from matsql.agents.execution import render_execution
from matsql.agents.parsing import extract_sql
from matsql.agents.templates import load_template
from matsql.backends.base import ChatPrompt
from matsql.records import VALIDATORS, Critique, ExecInfo, Question

NAME = "fixer"


def render_critiques(critiques: dict[str, Critique]) -> str:
    t = load_template(NAME)
    items = []
    for agent in [*VALIDATORS, *sorted(set(critiques) - set(VALIDATORS))]:
        c = critiques.get(agent)
        if c is None:
            continue
        vt = load_template(agent) if agent in VALIDATORS else None
        items.append(
            t.extra["critique_item"].format(agent=agent, prefix=vt.prefix if vt else "", text=c.text.strip())
        )
    return "\n".join(items) if items else t.extra["no_critique"]


def build(
    q: Question, schema: str, sql: str | None, exec: ExecInfo | None, critiques: dict[str, Critique]
) -> ChatPrompt:
    return load_template(NAME).prompt(
        schema=schema,
        question=q.question,
        evidence=q.evidence or "None",
        sql=sql or "",
        execution=render_execution(exec),
        critiques=render_critiques(critiques),
    )


def parse(text: str) -> str | None:
    return extract_sql(text)


def render_target(sql: str) -> str:
    return f"\n```sql\n{sql}\n```"
