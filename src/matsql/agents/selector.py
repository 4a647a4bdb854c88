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


def executed_digest(info: ExecInfo | None) -> str | None:
    """The result digest of an executed SQL, None for a failure (it cannot be an option)."""
    return info.rows_digest if info is not None and info.status == "ok" else None


def fixer_changed(c: Candidate) -> bool:
    """The candidate ends with a different result than its planner SQL had (the fixer ran and
    its SQL gave another result, or failed where the planner's ran, or the reverse)."""
    fin = c.final_exec
    return (fin.status, executed_digest(fin)) != (c.exec.status, executed_digest(c.exec))


def build_options(
    record: RolloutRecord, seed: int = 0, with_verdicts: bool = False, union: bool = False
) -> list[Option]:
    """The options of one question: final candidates whose SQL executed, one per distinct
    execution result (``rows_digest``; the lowest candidate index speaks for the group).
    Their order is a seeded shuffle keyed by question id over options sorted by result digest,
    so two arms with the same candidate results present them in the same order.

    ``union`` (``select --options union``, the union-vote rule): options over every SQL the
    pipeline executed, each candidate's final SQL and, where the fixer changed a candidate's
    result, its planner SQL too (up to 2K results). The fixer then adds a candidate instead of
    replacing one, so a right planner SQL that a false alarm sent to the fixer keeps its vote.
    A planner SQL ranks after every final SQL (K + index): an option's ``candidates`` list the
    candidates that produced its result, final SQL first, and its SQL, result and correctness
    are its first producer's. Without ``union`` this is the same builder with no planner SQL."""
    k = len(record.candidates)
    groups: dict[str, list[tuple[int, Candidate]]] = {}
    for c in record.candidates:
        if (dg := executed_digest(c.final_exec)) is not None and c.final_sql:
            groups.setdefault(dg, []).append((c.index, c))
        if union and fixer_changed(c) and (dg := executed_digest(c.exec)) is not None and c.planner.sql:
            groups.setdefault(dg, []).append((k + c.index, c))
    opts = []
    for dg in sorted(groups):
        members = sorted(groups[dg], key=lambda rc: rc[0])
        rank, first = members[0]
        final = rank < k
        main = first.main
        opts.append(
            Option(
                sql=(first.final_sql if final else first.planner.sql) or "",
                exec=first.final_exec if final else first.exec,
                verdicts={n: v.verdict for n, v in main.critiques.items()}
                if (with_verdicts and main)
                else None,
                correct=first.final_correct if final else first.correct,
                candidates=tuple(c.index for _, c in members),
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
