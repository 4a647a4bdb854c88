"""``joint`` (paper Alg. 2): every agent decision is credited by its whole rollout's outcome.

A branch is one rollout (planner sample -> both critiques -> gate -> fixer); its
``final_correct`` is the gated pipeline's result. Validators: a critique is chosen iff its
branch ended correct. Planner: a sample is chosen iff its inference rollout (branch 0) ended
correct. Fixer: only gated branches (where the fixer's output was the rollout's result).
Selector: options credited by final correctness (see ``selector``).
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import Group, PromptFn, check_agent, make_labeler
from matsql.labels.fixer import fixer_groups
from matsql.labels.planner import planner_groups
from matsql.labels.selector import selector_groups
from matsql.labels.validators import validator_groups
from matsql.records import AGENTS, VALIDATORS, Branch, Candidate, Critique, RolloutRecord

MODE = "joint"


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool:
    return branch.final_correct


def groups_joint(
    records: Sequence[RolloutRecord],
    agent: str,
    prompt_fn: PromptFn,
    *,
    seed: int = 0,
    with_verdicts: bool = False,
) -> list[Group]:
    check_agent(agent, AGENTS, MODE)
    if agent == "planner":
        return planner_groups(records, prompt_fn, MODE, lambda c: c.final_correct)
    if agent in VALIDATORS:
        return validator_groups(records, agent, prompt_fn, MODE, critique_label)
    if agent == "fixer":
        return fixer_groups(records, prompt_fn, MODE, gated_only=True)
    return selector_groups(records, prompt_fn, MODE, seed=seed, with_verdicts=with_verdicts)


label_joint = make_labeler(groups_joint, seeded=True)
