"""``independent``: a critique is chosen iff its verdict matches planner-vs-gold correctness.

The validator is judged alone, as a classifier of the planner's SQL; what the fixer would do
with the critique plays no part (the baseline arm of the study).
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import Group, PromptFn, make_labeler
from matsql.labels.validators import PLANNER_AND_VALIDATORS, mode_groups
from matsql.records import Branch, Candidate, Critique, RolloutRecord

MODE = "independent"
AGENTS = PLANNER_AND_VALIDATORS


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool:
    return (critique.verdict == "correct") == candidate.correct


def groups_independent(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    return mode_groups(records, agent, prompt_fn, MODE, critique_label)


label_independent = make_labeler(groups_independent)
