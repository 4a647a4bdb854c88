"""``collab_v2`` (inference-aligned): credit what inference would do with the critique.

A ``correct`` verdict keeps the planner SQL (chosen iff it is correct); an ``incorrect`` one
sends the candidate to the fixer (chosen iff ``fixes[0]`` ends correct). As in the pipeline, a
fix that produced no SQL falls back to the planner SQL. Unlike ``collab``, a critique that
wrongly approves a wrong SQL is never rewarded for what the fixer would have done, because at
inference the fixer would not have run.
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import DEFAULT_MAX_PAIRS_PER_PROMPT, Group, PromptFn, check_agent, pair_groups
from matsql.labels.planner import planner_groups
from matsql.labels.validators import validator_groups
from matsql.records import VALIDATORS, Branch, Candidate, Critique, PreferencePair, RolloutRecord

MODE = "collab_v2"
AGENTS = ("planner", *VALIDATORS)


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool | None:
    if critique.verdict == "correct":
        return candidate.correct
    fix = branch.fix
    if fix is None:
        return None
    return fix.correct if fix.sql is not None else candidate.correct


def groups_collab_v2(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    check_agent(agent, AGENTS, MODE)
    if agent == "planner":
        return planner_groups(records, prompt_fn, MODE, lambda c: c.correct)
    return validator_groups(records, agent, prompt_fn, MODE, critique_label)


def label_collab_v2(
    records: Sequence[RolloutRecord],
    agent: str,
    prompt_fn: PromptFn,
    *,
    max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
    max_pairs_per_question: int | None = None,
    seed: int = 0,
) -> list[PreferencePair]:
    return pair_groups(
        groups_collab_v2(records, agent, prompt_fn),
        max_pairs_per_prompt=max_pairs_per_prompt,
        max_pairs_per_question=max_pairs_per_question,
        seed=seed,
    )
