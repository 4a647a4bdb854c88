"""Pair yield: how many usable pairs a labelling gives, and why prompts give none.

The point is to see at a glance when a mode starves training (e.g. 0.33 vs 1.78 pairs per
question): pairs per question, questions with zero pairs, prompts whose texts all got the same
label (all-agree: no pair possible), unusable texts, and, for validators, which verdict beat
which (a mode that only ever prefers "incorrect" over "correct" teaches a bias, not a skill).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from matsql.labels.common import distinct_texts, uncapped_pairs
from matsql.labels.registry import LabelRun


@dataclass(frozen=True)
class YieldStats:
    agent: str
    mode: str
    questions: int
    questions_no_candidates: int  # e.g. missing database: nothing to label, never dropped silently
    pairs: int
    pairs_per_question: float
    questions_zero_pairs: int
    prompts: int
    prompts_with_pairs: int
    prompts_one_sided: int  # usable texts, all with one label: nothing to pair
    texts: int  # scored texts (one per branch critique / sample), before dedup
    unusable: int  # no credit possible (e.g. collab without a fix)
    positives: int  # usable texts labelled good
    positive_rate: float  # positives / usable texts
    conflicts: int  # distinct texts dropped: seen as both good and bad in one prompt
    pairs_uncapped: int  # before the per-prompt / per-question caps
    verdict_combos: dict[str, int] = field(default_factory=dict)  # "chosen>rejected" verdicts
    sft: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_yield(run: LabelRun, sft: dict[str, Any] | None = None) -> YieldStats:
    """Yield of one labelling run (``sft``: the E1 balance, shown beside the pairs)."""
    n_q = len(run.question_ids)
    per_q = Counter(p.question_id for p in run.pairs)
    usable = [it for g in run.groups for it in g.items if it.score is not None]
    positives = sum(1 for it in usable if it.meta.get("label"))
    prompts_with_pairs = len({(p.question_id, p.meta["prompt_digest"]) for p in run.pairs})
    one_sided = 0
    conflicts = 0
    uncapped = 0
    for g in run.groups:
        texts, dropped = distinct_texts(g)
        conflicts += len(dropped)
        n = len(uncapped_pairs(g))
        uncapped += n
        if texts and n == 0:
            one_sided += 1
    combos = Counter(
        f"{p.meta['chosen_verdict']}>{p.meta['rejected_verdict']}"
        for p in run.pairs
        if "chosen_verdict" in p.meta
    )
    return YieldStats(
        agent=run.agent,
        mode=run.mode,
        questions=n_q,
        questions_no_candidates=len(run.empty_question_ids),
        pairs=len(run.pairs),
        pairs_per_question=len(run.pairs) / n_q if n_q else 0.0,
        questions_zero_pairs=sum(1 for q in run.question_ids if per_q[q] == 0),
        prompts=len(run.groups),
        prompts_with_pairs=prompts_with_pairs,
        prompts_one_sided=one_sided,
        texts=sum(len(g.items) for g in run.groups),
        unusable=sum(1 for g in run.groups for it in g.items if it.score is None),
        positives=positives,
        positive_rate=positives / len(usable) if usable else 0.0,
        conflicts=conflicts,
        pairs_uncapped=uncapped,
        verdict_combos=dict(sorted(combos.items())),
        sft=sft,
    )


def _pct(n: int, d: int) -> str:
    return f"{n} ({100 * n / d:.0f}%)" if d else str(n)


def yield_table(stats: Sequence[YieldStats], title: str = "pair yield") -> Table:
    """Modes side by side (one column each), metrics as rows."""
    t = Table(title=title)
    t.add_column("metric", style="bold")
    for s in stats:
        t.add_column(f"{s.agent}\n{s.mode}", justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("questions", [str(s.questions) for s in stats]),
        ("questions without candidates", [str(s.questions_no_candidates) for s in stats]),
        ("pairs", [str(s.pairs) for s in stats]),
        ("pairs / question", [f"{s.pairs_per_question:.2f}" for s in stats]),
        ("questions with 0 pairs", [_pct(s.questions_zero_pairs, s.questions) for s in stats]),
        ("prompts", [str(s.prompts) for s in stats]),
        ("prompts with pairs", [_pct(s.prompts_with_pairs, s.prompts) for s in stats]),
        ("prompts all-agree", [_pct(s.prompts_one_sided, s.prompts) for s in stats]),
        ("texts scored", [str(s.texts) for s in stats]),
        ("unusable texts", [str(s.unusable) for s in stats]),
        ("label positive rate", [f"{s.positive_rate:.2f}" for s in stats]),
        ("conflicting texts dropped", [str(s.conflicts) for s in stats]),
        ("pairs before caps", [str(s.pairs_uncapped) for s in stats]),
    ]
    for combo in sorted({c for s in stats for c in s.verdict_combos}):
        rows.append((f"verdicts {combo}", [str(s.verdict_combos.get(combo, 0)) for s in stats]))
    if any(s.sft for s in stats):
        for key in ("examples", "follow", "resist"):
            rows.append((f"SFT {key}", [str(s.sft[key]) if s.sft else "" for s in stats]))
    for name, values in rows:
        t.add_row(name, *values)
    return t
