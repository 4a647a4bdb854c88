"""``collab``: a critique is chosen iff the fixer, run on its branch, ends at correct SQL.

Label-time rollouts run the fixer on every branch (gate or not), so ``fixes[0]`` is the fixer's
answer to this branch's critiques. A branch without a fix cannot be judged: unusable.
The planner agent has no collaborative credit of its own and is labelled by correctness.
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import Group, PromptFn, make_labeler
from matsql.labels.validators import PLANNER_AND_VALIDATORS, mode_groups
from matsql.records import Branch, Candidate, Critique, RolloutRecord

MODE = "collab"
AGENTS = PLANNER_AND_VALIDATORS


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool | None:
    fix = branch.fix
    return None if fix is None else fix.correct


def groups_collab(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    return mode_groups(records, agent, prompt_fn, MODE, critique_label)


label_collab = make_labeler(groups_collab)
