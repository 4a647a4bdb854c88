"""``collab_v2`` (inference-aligned): credit what inference would do with the critique.

A ``correct`` verdict keeps the planner SQL (chosen iff it is correct); an ``incorrect`` one
sends the candidate to the fixer (chosen iff ``fixes[0]`` ends correct). As in the pipeline, a
fix that produced no SQL falls back to the planner SQL. Unlike ``collab``, a critique that
wrongly approves a wrong SQL is never rewarded for what the fixer would have done, because at
inference the fixer would not have run.
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import Group, PromptFn, make_labeler
from matsql.labels.validators import PLANNER_AND_VALIDATORS, mode_groups
from matsql.records import Branch, Candidate, Critique, RolloutRecord

MODE = "collab_v2"
AGENTS = PLANNER_AND_VALIDATORS


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool | None:
    if critique.verdict == "correct":
        return candidate.correct
    fix = branch.fix
    if fix is None:
        return None
    return fix.correct if fix.sql is not None else candidate.correct


def groups_collab_v2(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    return mode_groups(records, agent, prompt_fn, MODE, critique_label)


label_collab_v2 = make_labeler(groups_collab_v2)
