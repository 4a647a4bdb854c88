"""Validator critiques grouped by the validator prompt of their candidate, scored by a mode's rule.

All branches of a candidate share one validator prompt (the candidate SQL and its execution), so
their sampled critiques compete with each other; candidates with identical SQL and execution
have identical prompts and merge into one group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matsql.labels.common import Group, GroupCollector, PromptFn, Scored, check_agent
from matsql.labels.planner import planner_groups
from matsql.records import VALIDATORS, Branch, Candidate, Critique, RolloutRecord

#: A mode's credit rule for one critique: chosen (True), rejected (False) or unusable (None).
CritiqueLabel = Callable[[Candidate, Branch, Critique], "bool | None"]

#: Agents of the modes that credit the planner by its own correctness (all but ``joint``).
PLANNER_AND_VALIDATORS = ("planner", *VALIDATORS)


def validator_groups(
    records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn, mode: str, label: CritiqueLabel
) -> list[Group]:
    """Score every branch's critique of ``agent``. An ``unknown`` verdict (format failure) is
    always rejected, whatever the mode; a branch without this validator's critique is skipped."""
    col = GroupCollector(agent, mode)
    for rec in records:
        for cand in rec.candidates:
            judged = [
                (bi, br, br.critiques[agent]) for bi, br in enumerate(cand.branches) if agent in br.critiques
            ]
            if not judged:  # never validated (e.g. no SQL to critique): no prompt, nothing to pair
                continue
            prompt = prompt_fn(agent, rec, cand)
            for bi, br, crit in judged:
                meta = {
                    "candidate": cand.index,
                    "branch": bi,
                    "planner_correct": cand.correct,
                    "verdict": crit.verdict,
                }
                lab = False if crit.verdict == "unknown" else label(cand, br, crit)
                if lab is None:
                    col.add(rec, prompt, Scored(crit.text, None, {**meta, "reason": "no_fix"}))
                else:
                    col.add(rec, prompt, Scored(crit.text, float(lab), {**meta, "label": lab}))
    return col.groups


def mode_groups(
    records: Sequence[RolloutRecord],
    agent: str,
    prompt_fn: PromptFn,
    mode: str,
    critique_label: CritiqueLabel,
) -> list[Group]:
    """Groups of a mode that differs from the others only in ``critique_label``: the planner is
    credited by its own correctness (no collaborative credit of its own), validators by the rule."""
    check_agent(agent, PLANNER_AND_VALIDATORS, mode)
    if agent == "planner":
        return planner_groups(records, prompt_fn, mode, lambda c: c.correct)
    return validator_groups(records, agent, prompt_fn, mode, critique_label)
