"""Selector: picks one of several candidates (distinct execution results, failures dropped).

One home for the selector's options: :class:`Option` and :func:`build_options` serve inference
(``matsql select``), preference labels (``labels/selector.py``) and SFT data
(``labels/sft_data.py``), so a training prompt shows options exactly as inference does.
Options may carry validator verdicts (feedback-aware selector). Numbers in the prompt are
1-based; :func:`parse` returns a 0-based index or ``None``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from matsql.agents.execution import render_execution
from matsql.agents.templates import load_template
from matsql.backends.base import ChatPrompt
from matsql.records import Candidate, ExecInfo, Question, RolloutRecord

NAME = "selector"
_ANSWER = re.compile(r"(?:answer\s*:)?\s*(?:candidate\s*)?\[?(\d+)\]?", re.IGNORECASE)


@dataclass(frozen=True)
class Option:
    """One option the selector sees: a final SQL with its execution result (and, for a
    feedback-aware selector, the validator verdicts of its first candidate's inference branch)."""

    sql: str
    exec: ExecInfo
    verdicts: dict[str, str] | None = None
    correct: bool = False  # the option's result is the gold result (labels and metrics only)
    candidates: tuple[int, ...] = ()  # indices of the candidates whose final result this is

    @property
    def candidate_index(self) -> int | None:
        """The first candidate with this result (None for an option no candidate gave, e.g. gold)."""
        return self.candidates[0] if self.candidates else None

    @property
    def votes(self) -> int:
        return len(self.candidates)


def _order_key(seed: int, qid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{qid}".encode()).digest()[:8], "little")


def build_options(record: RolloutRecord, seed: int = 0, with_verdicts: bool = False) -> list[Option]:
    """The options of one question: final candidates whose SQL executed, one per distinct
    execution result (``rows_digest``; the lowest candidate index speaks for the group).
    Their order is a seeded shuffle keyed by question id over options sorted by result digest,
    so two arms with the same candidate results present them in the same order."""
    groups: dict[str, list[Candidate]] = {}
    for c in record.candidates:
        info = c.final_exec
        if info.status != "ok" or not c.final_sql or info.rows_digest is None:
            continue
        groups.setdefault(info.rows_digest, []).append(c)
    opts = []
    for dg in sorted(groups):
        first = min(groups[dg], key=lambda c: c.index)
        main = first.main
        verdicts = {k: v.verdict for k, v in main.critiques.items()} if (with_verdicts and main) else None
        opts.append(
            Option(
                sql=first.final_sql or "",
                exec=first.final_exec,
                verdicts=verdicts,
                correct=first.final_correct,
                candidates=tuple(sorted(c.index for c in groups[dg])),
            )
        )
    random.Random(_order_key(seed, record.question_id)).shuffle(opts)
    return opts


def build(q: Question, schema: str, options: Sequence[Option]) -> ChatPrompt:
    t = load_template(NAME)
    parts = []
    for i, o in enumerate(options, start=1):
        item = t.extra["option_item"].format(number=i, sql=o.sql, execution=render_execution(o.exec))
        if o.verdicts:
            item += "\n" + t.extra["option_verdicts"].format(
                verdicts=", ".join(f"{k}: {v}" for k, v in sorted(o.verdicts.items()))
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
