"""Planner: question -> plan + SQL (MATS paper format)."""

from __future__ import annotations

from matsql.agents.parsing import extract_sql
from matsql.agents.templates import load_template
from matsql.backends.base import ChatPrompt
from matsql.records import Question

NAME = "planner"


def build(q: Question, schema: str) -> ChatPrompt:
    return load_template(NAME).prompt(schema=schema, question=q.question, evidence=q.evidence or "None")


def parse(text: str) -> str | None:
    return extract_sql(text, after="Final SQL query:")


def render_target(goal: str, conditions: str, tables: str, sql: str) -> str:
    """A planner answer in the trained format (SFT targets are built with this)."""
    return f"Goal: {goal}\nConditions: {conditions}\nTables: {tables}\nFinal SQL query:\n```sql\n{sql}\n```"
