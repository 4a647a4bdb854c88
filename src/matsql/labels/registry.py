"""Which label modes exist for which agent, and one entry point that runs any of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from matsql.labels.collab import groups_collab
from matsql.labels.collab_v2 import groups_collab_v2
from matsql.labels.common import DEFAULT_MAX_PAIRS_PER_PROMPT, Group, PromptFn, SFTExample, pair_groups
from matsql.labels.fixer import groups_e1, sft_e1
from matsql.labels.independent import groups_independent
from matsql.labels.joint import groups_joint
from matsql.records import PreferencePair, RolloutRecord

VALIDATOR_MODES = ("independent", "collab", "collab_v2", "joint")
MODES_BY_AGENT: dict[str, tuple[str, ...]] = {
    "planner": VALIDATOR_MODES,  # all but joint credit planner correctness: same pairs
    "val-sel": VALIDATOR_MODES,
    "val-cond": VALIDATOR_MODES,
    "fixer": ("e1", "joint"),
    "selector": ("joint",),  # credit = final correctness of each option
}
ALL_MODES = ("independent", "collab", "collab_v2", "joint", "e1")


@dataclass
class LabelRun:
    """One (agent, mode) labelling: the scored groups (for yields) and the pairs they gave."""

    agent: str
    mode: str
    question_ids: list[str]
    empty_question_ids: list[str]  # no candidates (e.g. missing database)
    groups: list[Group]
    pairs: list[PreferencePair]
    sft: list[SFTExample] | None = None
    options: dict[str, object] = field(default_factory=dict)


def modes_for(agent: str, mode: str) -> tuple[str, ...]:
    """``all`` -> every mode of the agent; a single mode is checked against the agent."""
    if agent not in MODES_BY_AGENT:
        raise ValueError(f"unknown agent {agent!r}; expected one of {', '.join(MODES_BY_AGENT)}")
    allowed = MODES_BY_AGENT[agent]
    if mode == "all":
        return allowed
    if mode not in allowed:
        raise ValueError(f"agent {agent!r} has no mode {mode!r}; its modes: {', '.join(allowed)}")
    return (mode,)


def label_groups(
    agent: str,
    mode: str,
    records: Sequence[RolloutRecord],
    prompt_fn: PromptFn,
    *,
    seed: int = 0,
    with_verdicts: bool = False,
) -> list[Group]:
    modes_for(agent, mode)
    if mode == "independent":
        return groups_independent(records, agent, prompt_fn)
    if mode == "collab":
        return groups_collab(records, agent, prompt_fn)
    if mode == "collab_v2":
        return groups_collab_v2(records, agent, prompt_fn)
    if mode == "e1":
        return groups_e1(records, agent, prompt_fn)
    return groups_joint(records, agent, prompt_fn, seed=seed, with_verdicts=with_verdicts)


def run_labels(
    agent: str,
    mode: str,
    records: Sequence[RolloutRecord],
    prompt_fn: PromptFn,
    *,
    max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
    max_pairs_per_question: int | None = None,
    seed: int = 0,
    with_verdicts: bool = False,
    sft_max_per_question: int | None = None,
) -> LabelRun:
    """Pairs (and, for E1, the fixer SFT mix) of one agent under one mode."""
    groups = label_groups(agent, mode, records, prompt_fn, seed=seed, with_verdicts=with_verdicts)
    pairs = pair_groups(
        groups,
        max_pairs_per_prompt=max_pairs_per_prompt,
        max_pairs_per_question=max_pairs_per_question,
        seed=seed,
    )
    sft = (
        sft_e1(records, prompt_fn, max_per_question=sft_max_per_question, seed=seed) if mode == "e1" else None
    )
    return LabelRun(
        agent=agent,
        mode=mode,
        question_ids=[r.question_id for r in records],
        empty_question_ids=[r.question_id for r in records if not r.candidates],
        groups=groups,
        pairs=pairs,
        sft=sft,
        options={
            "max_pairs_per_prompt": max_pairs_per_prompt,
            "max_pairs_per_question": max_pairs_per_question,
            "seed": seed,
            "with_verdicts": with_verdicts,
            "sft_max_per_question": sft_max_per_question,
        },
    )
