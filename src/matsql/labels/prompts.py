"""The real ``PromptFn``: the agents' own prompt builders over a schema lookup.

Labels pair texts that were generated for one prompt, so the prompt must be rebuilt exactly as
the rollout built it; :func:`check_prompts` compares rebuilt prompts with the digests the
rollout recorded and catches a wrong benchmark (schema text) or a changed template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

from matsql.agents import fixer, planner, selector, validator
from matsql.backends.base import ChatPrompt
from matsql.labels.common import PromptFn
from matsql.records import VALIDATORS, Branch, Candidate, RolloutRecord, record_prompt_digest


def make_prompt_fn(schema_of: Callable[[str], str]) -> PromptFn:
    """``schema_of(db_id) -> schema text`` (e.g. ``Benchmark.schema_text``); cached here."""
    schema = cache(schema_of)

    def prompt_fn(
        agent: str,
        record: RolloutRecord,
        candidate: Candidate | None = None,
        branch: Branch | None = None,
        options: Sequence[selector.Option] | None = None,
    ) -> ChatPrompt:
        q = record.question
        s = schema(q.db_id)
        if agent == "planner":
            return planner.build(q, s)
        if agent in VALIDATORS:
            if candidate is None:
                raise ValueError(f"{agent} prompt of question {q.question_id} needs a candidate")
            return validator.build(agent, q, s, candidate.planner.sql, candidate.exec)
        if agent == "fixer":
            if candidate is None or branch is None:
                raise ValueError(f"fixer prompt of question {q.question_id} needs a candidate and a branch")
            return fixer.build(q, s, candidate.planner.sql, candidate.exec, branch.critiques)
        if agent == "selector":
            if options is None:
                raise ValueError(f"selector prompt of question {q.question_id} needs options")
            return selector.build(q, s, options)
        raise ValueError(f"no prompt for agent {agent!r}")

    return prompt_fn


def check_prompts(records: Sequence[RolloutRecord], prompt_fn: PromptFn, limit: int = 5) -> list[str]:
    """Rebuilt-vs-recorded prompt digests of planner, validator and fixer outputs (where the
    rollout recorded one). Returns up to ``limit`` mismatch descriptions; empty means all agree."""
    bad: list[str] = []
    for rec in records:
        for cand in rec.candidates:
            checks: list[tuple[str, str | None, tuple]] = [
                ("planner", cand.planner.prompt_digest, ("planner", rec))
            ]
            for bi, br in enumerate(cand.branches):
                for v, crit in br.critiques.items():
                    checks.append((f"branch {bi} {v}", crit.prompt_digest, (v, rec, cand)))
                for fix in br.fixes[:1]:
                    checks.append((f"branch {bi} fixer", fix.prompt_digest, ("fixer", rec, cand, br)))
            for where, recorded, args in checks:
                if recorded is None:
                    continue
                got = record_prompt_digest(prompt_fn(*args))
                if got != recorded:
                    bad.append(
                        f"question {rec.question_id} candidate {cand.index} {where}: "
                        f"rebuilt prompt digest {got} != recorded {recorded}"
                    )
                    if len(bad) >= limit:
                        return bad
    return bad
