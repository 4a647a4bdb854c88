"""Selector pairs: over one question's distinct-result options, a correct option's number is
chosen against an incorrect option's number.

Options are exactly those ``matsql select`` presents at inference
(:func:`matsql.agents.selector.build_options`): the candidates' final SQL with execution
results, failures dropped, candidates with the same result (rows digest) collapsed into one
option. The option order is a seeded shuffle keyed on the question id, so the position of the
correct answer carries no signal and is identical across runs and arms.
"""

from __future__ import annotations

from collections.abc import Sequence

from matsql.agents import selector as selector_agent
from matsql.labels.common import (
    Group,
    GroupCollector,
    PromptFn,
    Scored,
    check_agent,
    make_labeler,
)
from matsql.records import RolloutRecord

MODE = "joint"  # credit is the final (post-fixer) correctness of the rollout a candidate ended in
AGENTS = ("selector",)


def selector_groups(
    records: Sequence[RolloutRecord],
    prompt_fn: PromptFn,
    mode: str = MODE,
    *,
    seed: int = 0,
    with_verdicts: bool = False,
) -> list[Group]:
    col = GroupCollector("selector", mode)
    for rec in records:
        opts = selector_agent.build_options(rec, seed=seed, with_verdicts=with_verdicts)
        if not opts:
            continue
        prompt = prompt_fn("selector", rec, options=opts)
        for i, o in enumerate(opts):
            meta = {"option": i, "option_candidates": list(o.candidates), "label": o.correct}
            col.add(rec, prompt, Scored(selector_agent.render_target(i), float(o.correct), meta))
    return col.groups


def groups_selector(
    records: Sequence[RolloutRecord],
    agent: str,
    prompt_fn: PromptFn,
    *,
    seed: int = 0,
    with_verdicts: bool = False,
) -> list[Group]:
    check_agent(agent, AGENTS, MODE)
    return selector_groups(records, prompt_fn, MODE, seed=seed, with_verdicts=with_verdicts)


label_selector = make_labeler(groups_selector, seeded=True)
