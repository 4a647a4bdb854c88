"""``collab``: a critique is chosen iff the fixer, run on its branch, ends at correct SQL.

Label-time rollouts run the fixer on every branch (gate or not), so ``fixes[0]`` is the fixer's
answer to this branch's critiques. A branch without a fix cannot be judged: unusable.
The planner agent has no collaborative credit of its own and is labelled by correctness.
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import DEFAULT_MAX_PAIRS_PER_PROMPT, Group, PromptFn, check_agent, pair_groups
from matsql.labels.planner import planner_groups
from matsql.labels.validators import validator_groups
from matsql.records import VALIDATORS, Branch, Candidate, Critique, PreferencePair, RolloutRecord

MODE = "collab"
AGENTS = ("planner", *VALIDATORS)


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool | None:
    fix = branch.fix
    return None if fix is None else fix.correct


def groups_collab(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    check_agent(agent, AGENTS, MODE)
    if agent == "planner":
        return planner_groups(records, prompt_fn, MODE, lambda c: c.correct)
    return validator_groups(records, agent, prompt_fn, MODE, critique_label)


def label_collab(
    records: Sequence[RolloutRecord],
    agent: str,
    prompt_fn: PromptFn,
    *,
    max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
    max_pairs_per_question: int | None = None,
    seed: int = 0,
) -> list[PreferencePair]:
    return pair_groups(
        groups_collab(records, agent, prompt_fn),
        max_pairs_per_prompt=max_pairs_per_prompt,
        max_pairs_per_question=max_pairs_per_question,
        seed=seed,
    )
