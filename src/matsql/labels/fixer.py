"""Fixer data (E1, the critique-aware fixer): preference pairs and the SFT mix.

The fixer prompt of a branch carries that branch's actual critiques (right or wrong), so the
fixer is trained on varied critique texts and must learn when to follow and when to resist.

Pairs: among the fixer samples of one prompt, credit is the improvement over the planner SQL,
``delta = fix.correct - candidate.correct`` in {-1, 0, 1}; a sample beats another iff its delta
is higher. Within one prompt the planner correctness is fixed, so this orders by correctness:
keeping a correct SQL (0) beats breaking it (-1); repairing a wrong one (1) beats not (0).
In ``joint`` only gated branches count: on the others the fixer made no decision in the rollout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from matsql.agents import fixer as fixer_agent
from matsql.labels.common import (
    Group,
    GroupCollector,
    PromptFn,
    Scored,
    SFTExample,
    check_agent,
    make_labeler,
    rng_for,
)
from matsql.records import Branch, Candidate, RolloutRecord

MODE = "e1"
AGENTS = ("fixer",)


def fixer_groups(
    records: Sequence[RolloutRecord], prompt_fn: PromptFn, mode: str, *, gated_only: bool = False
) -> list[Group]:
    col = GroupCollector("fixer", mode)
    for rec in records:
        for cand in rec.candidates:
            for bi, br in enumerate(cand.branches):
                if (gated_only and not br.gate) or not br.fixes:
                    continue
                prompt = prompt_fn("fixer", rec, cand, br)
                verdicts = {v: c.verdict for v, c in br.critiques.items()}
                for fi, fix in enumerate(br.fixes):
                    delta = int(fix.correct) - int(cand.correct)
                    meta = {
                        "candidate": cand.index,
                        "branch": bi,
                        "fix": fi,
                        "gate": br.gate,
                        "verdicts": verdicts,
                        "planner_correct": cand.correct,
                        "label": fix.correct,
                        "delta": delta,
                    }
                    col.add(rec, prompt, Scored(fix.text, float(delta), meta))
    return col.groups


def groups_e1(records: Sequence[RolloutRecord], agent: str, prompt_fn: PromptFn) -> list[Group]:
    check_agent(agent, AGENTS, MODE)
    return fixer_groups(records, prompt_fn, MODE)


label_e1 = make_labeler(groups_e1)


def _sft_target(rec: RolloutRecord, cand: Candidate, br: Branch) -> tuple[str, str]:
    """(completion after the prefix, where it came from)."""
    if cand.correct:
        return fixer_agent.render_target(cand.planner.sql or ""), "planner"
    for fix in br.fixes:
        if fix.correct and fix.sql is not None:
            return fix.text, "fix"
    return fixer_agent.render_target(rec.question.gold_sql), "gold"


def sft_e1(
    records: Sequence[RolloutRecord],
    prompt_fn: PromptFn,
    *,
    max_per_question: int | None = None,
    seed: int = 0,
) -> list[SFTExample]:
    """One example per (candidate, branch) whose critiques are informative (at least one known
    verdict). The target follows a right critique and resists a wrong one: a wrong candidate
    gets a correct fixer sample of the branch (else the gold SQL); a correct candidate gets its
    own SQL back unchanged. ``meta.kind`` is ``follow`` when the target agrees with the
    critiques (wrong SQL + some ``incorrect``; right SQL + no ``incorrect``), else ``resist``."""
    if max_per_question is not None and max_per_question < 1:
        raise ValueError(f"max_per_question must be >= 1 or None, got {max_per_question}")
    out: list[SFTExample] = []
    for rec in records:
        seen: set[tuple[Any, str]] = set()
        mine: list[SFTExample] = []
        for cand in rec.candidates:
            for bi, br in enumerate(cand.branches):
                verdicts = {v: c.verdict for v, c in br.critiques.items()}
                known = [v for v in verdicts.values() if v != "unknown"]
                if not known:
                    continue
                flagged = "incorrect" in known
                target, source = _sft_target(rec, cand, br)
                prompt = prompt_fn("fixer", rec, cand, br)
                if (prompt, target.strip()) in seen:
                    continue
                seen.add((prompt, target.strip()))
                kind = "follow" if flagged != cand.correct else "resist"
                mine.append(
                    SFTExample(
                        question_id=rec.question_id,
                        db_id=rec.question.db_id,
                        agent="fixer",
                        mode=MODE,
                        prompt=prompt.as_messages(),
                        prefix=prompt.prefix,
                        completion=target,
                        meta={
                            "candidate": cand.index,
                            "branch": bi,
                            "verdicts": verdicts,
                            "planner_correct": cand.correct,
                            "kind": kind,
                            "target_source": source,
                        },
                    )
                )
        if max_per_question is not None and len(mine) > max_per_question:
            keep = sorted(rng_for(seed, "sft", rec.question_id).sample(range(len(mine)), max_per_question))
            mine = [mine[i] for i in keep]
        out.extend(mine)
    return out


def sft_balance(records: Sequence[RolloutRecord], examples: Sequence[SFTExample]) -> dict[str, Any]:
    """Counts a reader needs to judge the mix: follow vs resist, target sources, coverage."""
    branches = sum(len(c.branches) for r in records for c in r.candidates)
    uninformative = sum(
        1
        for r in records
        for c in r.candidates
        for b in c.branches
        if all(x.verdict == "unknown" for x in b.critiques.values())
    )
    kinds = Counter(e.meta["kind"] for e in examples)
    sources = Counter(e.meta["target_source"] for e in examples)
    qs = {e.question_id for e in examples}
    return {
        "examples": len(examples),
        "follow": kinds.get("follow", 0),
        "resist": kinds.get("resist", 0),
        "target_source": {k: sources.get(k, 0) for k in ("fix", "gold", "planner")},
        "branches": branches,
        "uninformative_branches": uninformative,
        "questions": len(records),
        "questions_with_examples": len(qs),
    }
