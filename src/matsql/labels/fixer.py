"""Fixer data: E1 preference pairs (the critique-aware fixer), and :func:`fixer_sft`, the one
fixer SFT builder, for the E1 SFT mix and the SFT-stage data of ``train sft-data``.

The fixer prompt of a branch carries that branch's actual critiques (right or wrong), so the
fixer is trained on varied critique texts and must learn when to follow and when to resist.

Pairs: among the fixer samples of one prompt, credit is the improvement over the planner SQL,
``delta = fix.correct - candidate.correct`` in {-1, 0, 1}; a sample beats another iff its delta
is higher. Within one prompt the planner correctness is fixed, so this orders by correctness:
keeping a correct SQL (0) beats breaking it (-1); repairing a wrong one (1) beats not (0).
In ``joint`` only gated branches count: on the others the fixer made no decision in the rollout.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from matsql.agents import fixer as fixer_agent
from matsql.backends.base import ChatPrompt
from matsql.draws import rng_for, sft_rng, sft_unit
from matsql.labels import teacher
from matsql.labels.common import (
    Group,
    GroupCollector,
    PromptFn,
    Scored,
    SFTExample,
    check_agent,
    distinct_candidates,
    make_labeler,
)
from matsql.records import Branch, Candidate, Critique, Fix, RolloutRecord

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


FixerCritiques = Literal["branch", "rollout", "teacher"]


@dataclass(frozen=True)
class FixerExample:
    """One fixer SFT example: the prompt carries ``critiques`` about ``candidate``; ``target`` is
    the completion after the prompt's prefix and ``source`` where it came from (``planner``: the
    candidate's own SQL kept, ``fix``: a correct fixer sample, ``gold``: the gold SQL)."""

    record: RolloutRecord
    candidate: Candidate
    branch: int | None  # the rollout branch whose critiques these are (None: a set built for it)
    critiques: dict[str, Critique]
    prompt: ChatPrompt
    target: str
    source: str

    @property
    def verdicts(self) -> dict[str, str]:
        return {v: c.verdict for v, c in self.critiques.items()}

    @property
    def kind(self) -> str:
        """``follow`` when the target agrees with the critiques (wrong SQL and some
        ``incorrect``; right SQL and none), else ``resist``."""
        flagged = "incorrect" in self.verdicts.values()
        return "follow" if flagged != self.candidate.correct else "resist"


def _critique_sets(
    rec: RolloutRecord, cand: Candidate, critiques: FixerCritiques
) -> list[tuple[int | None, dict[str, Critique], Sequence[Fix]]]:
    """(branch, critiques, that branch's fixer samples) the candidate is trained on."""
    if critiques == "branch":  # each branch whose critiques say something (a known verdict)
        return [
            (bi, dict(br.critiques), br.fixes)
            for bi, br in enumerate(cand.branches)
            if any(c.verdict != "unknown" for c in br.critiques.values())
        ]
    if critiques == "rollout":  # the candidate's distinct critique texts, else the teacher's
        sets, seen = [], set()
        for br in cand.branches:
            key = json.dumps({k: v.text for k, v in sorted(br.critiques.items())})
            if br.critiques and key not in seen:
                seen.add(key)
                sets.append((None, dict(br.critiques), ()))
        if sets:
            return sets
    tcs = teacher.critiques(cand.planner.sql, cand.exec, rec.question.gold_sql, rec.gold_exec)
    return (
        [(None, {a: Critique(agent=a, text=t.text, verdict=t.verdict) for a, t in tcs.items()}, ())]
        if tcs
        else []
    )


def fixer_sft(
    records: Sequence[RolloutRecord],
    prompt_fn: PromptFn,
    *,
    critiques: FixerCritiques = "branch",
    keep_correct: float = 1.0,
    max_per_question: int | None = None,
    seed: int = 0,
    skipped: Counter[str] | None = None,
) -> list[FixerExample]:
    """The one fixer SFT builder: a correct candidate's target is its own SQL (the fixer learns to
    leave right SQL alone; ``keep_correct`` is the share of correct candidates kept), a wrong
    one's the gold SQL, or for E1 a correct fixer sample of the branch when there is one.

    ``critiques`` picks what the prompts carry and how a question's examples are drawn:

    - ``branch`` (E1, ``labels build --mode e1``): every candidate's rollout branches with a known
      verdict, each with its own sampled critiques, right or wrong; identical (prompt, target)
      pairs once; ``max_per_question`` keeps a seeded subset in rollout order.
    - ``rollout`` / ``teacher`` (``train sft-data``): one candidate per distinct SQL with each
      distinct set of its rollout critiques (``rollout``; the rule-based teacher's when it has
      none) or the teacher's only; questions whose gold SQL failed and candidates without SQL
      are skipped; a question's examples are shuffled and the first ``max_per_question`` kept.

    The two draws, and the gold text (as written for E1, without a trailing ``;`` otherwise),
    are those of the committed datasets. ``skipped`` counts what was left out, by reason.
    """
    if max_per_question is not None and max_per_question < 1:
        raise ValueError(f"max_per_question must be >= 1 or None, got {max_per_question}")
    skipped = Counter() if skipped is None else skipped
    e1 = critiques == "branch"
    out: list[FixerExample] = []
    for rec in records:
        gold = rec.question.gold_sql if e1 else rec.question.gold_sql.strip().rstrip(";")
        if not e1 and not rec.gold_exec.ok:
            skipped["gold_failed"] += 1
            continue
        mine: list[FixerExample] = []
        seen: set[tuple[ChatPrompt, str]] = set()
        for cand in rec.candidates if e1 else distinct_candidates(rec):
            if not e1 and cand.planner.sql is None:
                skipped["no_sql"] += 1
                continue
            if cand.correct and sft_unit(seed, rec.question_id, cand.index, "keep") >= keep_correct:
                skipped["correct_not_kept"] += 1
                continue
            for bi, crit, fixes in _critique_sets(rec, cand, critiques):
                if cand.correct:
                    target, source = fixer_agent.render_target(cand.planner.sql or ""), "planner"
                else:
                    good = next((f for f in fixes if f.correct and f.sql is not None), None)
                    target, source = (good.text, "fix") if good else (fixer_agent.render_target(gold), "gold")
                prompt = prompt_fn(
                    "fixer", rec, cand, Branch(critiques=crit) if bi is None else cand.branches[bi]
                )
                if (prompt, target.strip()) in seen:
                    continue
                seen.add((prompt, target.strip()))
                mine.append(FixerExample(rec, cand, bi, crit, prompt, target, source))
        if e1:
            if max_per_question is not None and len(mine) > max_per_question:
                keep = rng_for(seed, "sft", rec.question_id).sample(range(len(mine)), max_per_question)
                mine = [mine[i] for i in sorted(keep)]
        else:
            sft_rng(seed, rec.question_id, "fixer").shuffle(mine)
            if max_per_question is not None and len(mine) > max_per_question:
                skipped["over_max_per_question"] += len(mine) - max_per_question
                mine = mine[:max_per_question]
        out.extend(mine)
    return out


def sft_e1(
    records: Sequence[RolloutRecord],
    prompt_fn: PromptFn,
    *,
    max_per_question: int | None = None,
    seed: int = 0,
) -> list[SFTExample]:
    """E1's SFT mix (:func:`fixer_sft` over informative branches) as label-mode examples; ``meta``
    names the candidate, branch, verdicts, ``kind`` (follow / resist) and target source."""
    return [
        SFTExample(
            question_id=e.record.question_id,
            db_id=e.record.question.db_id,
            agent="fixer",
            mode=MODE,
            prompt=e.prompt.as_messages(),
            prefix=e.prompt.prefix,
            completion=e.target,
            meta={
                "candidate": e.candidate.index,
                "branch": e.branch,
                "verdicts": e.verdicts,
                "planner_correct": e.candidate.correct,
                "kind": e.kind,
                "target_source": e.source,
            },
        )
        for e in fixer_sft(records, prompt_fn, max_per_question=max_per_question, seed=seed)
    ]


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
