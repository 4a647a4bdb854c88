"""``independent``: a critique is chosen iff its verdict matches planner-vs-gold correctness.

The validator is judged alone, as a classifier of the planner's SQL; what the fixer would do
with the critique plays no part (the baseline arm of the study).
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.labels.common import DEFAULT_MAX_PAIRS_PER_PROMPT, Group, PromptFn, check_agent, pair_groups
from matsql.labels.planner import planner_groups
from matsql.labels.validators import validator_groups
from matsql.records import VALIDATORS, Branch, Candidate, Critique, PreferencePair, RolloutRecord

MODE = "independent"
AGENTS = ("planner", *VALIDATORS)


def critique_label(candidate: Candidate, branch: Branch, critique: Critique) -> bool:
    return (critique.verdict == "correct") == candidate.correct


def groups_independent(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    check_agent(agent, AGENTS, MODE)
    if agent == "planner":
        return planner_groups(records, prompt_fn, MODE, lambda c: c.correct)
    return validator_groups(records, agent, prompt_fn, MODE, critique_label)


def label_independent(
    records: Sequence[RolloutRecord],
    agent: str,
    prompt_fn: PromptFn,
    *,
    max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
    max_pairs_per_question: int | None = None,
    seed: int = 0,
) -> list[PreferencePair]:
    return pair_groups(
        groups_independent(records, agent, prompt_fn),
        max_pairs_per_prompt=max_pairs_per_prompt,
        max_pairs_per_question=max_pairs_per_question,
        seed=seed,
    )
