"""Validators ``val-sel`` (SELECT list) and ``val-cond`` (conditions/joins).

The assistant turn starts with the template's prefix (``SELECT.`` / ``CONDITION.``); a
critique ends with ``Conclude: correct|incorrect``. A missing verdict parses as ``unknown``.
"""

from __future__ import annotations

from matsql.agents.execution import render_execution
from matsql.agents.parsing import extract_verdict
from matsql.agents.templates import load_template
from matsql.backends.base import ChatPrompt
from matsql.records import ExecInfo, Question, Verdict

NAMES = ("val-sel", "val-cond")


def build(agent: str, q: Question, schema: str, sql: str | None, exec: ExecInfo | None) -> ChatPrompt:
    if agent not in NAMES:
        raise ValueError(f"unknown validator {agent!r}; expected one of {NAMES}")
    return load_template(agent).prompt(
        schema=schema,
        question=q.question,
        evidence=q.evidence or "None",
        sql=sql or "",
        execution=render_execution(exec),
    )


def parse(text: str) -> Verdict:
    return extract_verdict(text)  # type: ignore[return-value]


def prefix(agent: str) -> str:
    return load_template(agent).prefix


def render_target(body: str, verdict: str) -> str:
    """A critique continuation in the trained format (after the prefix)."""
    return f" {body.strip()}\nConclude: {verdict}"
