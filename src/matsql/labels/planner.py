"""Planner pairs: planner texts of one question, credited by how their candidate ended.

Every candidate of a question shares the planner prompt, so all K samples compete; ``credit``
is planner-vs-gold correctness (independent-style modes) or the rollout's final correctness
(joint).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matsql.labels.common import Group, GroupCollector, PromptFn, Scored
from matsql.records import Candidate, RolloutRecord


def planner_groups(
    records: Sequence[RolloutRecord], prompt_fn: PromptFn, mode: str, credit: Callable[[Candidate], bool]
) -> list[Group]:
    col = GroupCollector("planner", mode)
    for rec in records:
        if not rec.candidates:
            continue
        prompt = prompt_fn("planner", rec)
        for cand in rec.candidates:
            ok = credit(cand)
            col.add(rec, prompt, Scored(cand.planner.text, float(ok), {"candidate": cand.index, "label": ok}))
    return col.groups
