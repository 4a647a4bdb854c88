"""Selector: picks one of several candidates (distinct execution results, failures dropped).

Options may carry validator verdicts (feedback-aware selector). Numbers in the prompt are
1-based; :func:`parse` returns a 0-based index or ``None``.
"""

from __future__ import annotations

import re

from matsql.agents.execution import render_execution
from matsql.agents.templates import load_template
from matsql.backends.base import ChatPrompt
from matsql.records import ExecInfo, Question

NAME = "selector"
_ANSWER = re.compile(r"(?:answer\s*:)?\s*(?:candidate\s*)?\[?(\d+)\]?", re.IGNORECASE)

Option = tuple[str, ExecInfo, dict[str, str] | None]


def build(q: Question, schema: str, options: list[Option]) -> ChatPrompt:
    t = load_template(NAME)
    parts = []
    for i, (sql, info, verdicts) in enumerate(options, start=1):
        item = t.extra["option_item"].format(number=i, sql=sql, execution=render_execution(info))
        if verdicts:
            item += "\n" + t.extra["option_verdicts"].format(
                verdicts=", ".join(f"{k}: {v}" for k, v in sorted(verdicts.items()))
            )
        parts.append(item)
    return t.prompt(
        schema=schema, question=q.question, evidence=q.evidence or "None", options="\n\n".join(parts)
    )


def parse(text: str, n_options: int) -> int | None:
    m = _ANSWER.search(text)
    if not m:
        return None
    k = int(m.group(1))
    return k - 1 if 1 <= k <= n_options else None


def render_target(index: int) -> str:
    return f" {index + 1}"
