"""Per-question and aggregate metrics over rollout records (DESIGN.md "Semantics").

Pure functions: one ``RolloutRecord`` -> one ``QuestionOutcome``; a list of outcomes -> a
``MetricSummary``. Nothing here reads files, so every rule is pinned by small fixtures.

Metrics (per question):

- ``planner@1``: correctness of the planner SQL of the greedy (T=0) candidate; ``None`` (NA)
  when the record has no greedy candidate.
- ``pipeline@1``: final correctness (after validators, gate and fixer) of that same candidate.
- ``sample@1``: mean planner correctness over all K candidates, the expected accuracy of one
  sample. When a greedy candidate is among the K it is included, as the brief asks.
- ``pass@K`` (oracle): any of the K final candidates is correct.
- ``majority``: vote by execution result over final candidates that executed ``ok``; the
  largest group of equal ``rows_digest`` wins, ties go to the group whose earliest candidate
  has the lowest index; correct iff that earliest candidate of the winning group is correct
  (candidates with equal digests are BIRD set-equal, hence equally correct); no ``ok``
  candidate -> wrong.
- ``pass@k`` for k < K: the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

Questions whose database is missing are never dropped silently: they are flagged, counted, and
scored wrong by default (``missing="wrong"``) or left out of the denominator (``"skip"``).
Error records (a question whose generation failed for good, or whose database is corrupt) are
counted (``n_error``) and always scored wrong.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from math import comb
from typing import Literal

from matsql.records import Candidate, RolloutRecord

MissingPolicy = Literal["wrong", "skip"]

#: Canonical metric names, in table order. ``pass@K`` is the oracle over all candidates.
METRICS: tuple[str, ...] = ("planner@1", "pipeline@1", "sample@1", "pass@K", "majority")

_PASS_AT = re.compile(r"^pass@(\d+)$")
# Difficulty labels of BIRD then Spider; others sort after these, alphabetically.
_DIFFICULTY_ORDER = ("simple", "moderate", "challenging", "easy", "medium", "hard", "extra")


@dataclass(frozen=True)
class QuestionOutcome:
    """Every metric of one question; bools where the metric is a hit/miss, None where NA."""

    question_id: str
    db_id: str
    difficulty: str
    missing_db: bool
    n_candidates: int
    n_final_correct: int
    planner_at_1: bool | None
    pipeline_at_1: bool | None
    sample_at_1: float | None
    pass_at_k: bool
    majority: bool
    error: bool = False  # an error record: scored wrong everywhere

    def value(self, metric: str) -> float | None:
        """The metric as a number in [0, 1] (None when undefined for this question).

        ``metric`` is a name of ``METRICS`` (``pass@k``/``pass@K``/``oracle`` are the oracle) or
        ``pass@<int>`` (unbiased estimator; equals the oracle when the int is K).
        """
        name = metric.strip()
        key = name.lower()
        simple = {
            "planner@1": self.planner_at_1,
            "pipeline@1": self.pipeline_at_1,
            "sample@1": self.sample_at_1,
            "pass@k": self.pass_at_k,
            "oracle": self.pass_at_k,
            "majority": self.majority,
        }
        if key in simple:
            v = simple[key]
            return None if v is None else float(v)
        m = _PASS_AT.match(key)
        if m is None:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)} or pass@<int>")
        k = int(m.group(1))
        if self.missing_db or self.error:
            return 0.0
        if k < 1 or k > self.n_candidates:
            raise ValueError(
                f"question {self.question_id}: pass@{k} needs 1 <= k <= K, "
                f"but it has K={self.n_candidates} candidates"
            )
        return pass_at_k_unbiased(self.n_candidates, self.n_final_correct, k)


def pass_at_k_unbiased(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    return 1.0 - comb(n - c, k) / comb(n, k)


def is_missing_db(record: RolloutRecord) -> bool:
    """The database file of this question was absent when the rollout ran."""
    return record.gold_exec.status == "missing_db" or any(
        c.exec.status == "missing_db" for c in record.candidates
    )


def greedy_candidate(candidates: Sequence[Candidate]) -> Candidate | None:
    """The T=0 candidate (the lowest index if several are marked greedy)."""
    greedy = [c for c in candidates if c.greedy]
    return min(greedy, key=lambda c: c.index) if greedy else None


def majority_pick(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate a vote by execution result picks: earliest member of the largest group."""
    groups: dict[tuple[str, object], list[Candidate]] = {}
    for cand in sorted(candidates, key=lambda c: c.index):
        ex = cand.final_exec
        if ex.status != "ok":
            continue
        # An ok result without a digest cannot be compared with others: it votes alone.
        key = ("digest", ex.rows_digest) if ex.rows_digest is not None else ("alone", cand.index)
        groups.setdefault(key, []).append(cand)
    if not groups:
        return None
    winner = max(groups.values(), key=lambda g: (len(g), -g[0].index))
    return winner[0]


def question_outcome(record: RolloutRecord) -> QuestionOutcome:
    """Score one rollout record (missing-database questions score wrong on every metric)."""
    q = record.question
    cands = record.candidates
    missing, error = is_missing_db(record), record.error is not None
    if missing or error:  # scored wrong on every metric, and counted as such
        return QuestionOutcome(
            question_id=q.question_id,
            db_id=q.db_id,
            difficulty=q.difficulty,
            missing_db=missing,
            n_candidates=len(cands),
            n_final_correct=0,
            planner_at_1=False,
            pipeline_at_1=False,
            sample_at_1=0.0,
            pass_at_k=False,
            majority=False,
            error=error and not missing,
        )
    greedy = greedy_candidate(cands)
    sampled = [c for c in cands if not c.greedy] or cands
    pick = majority_pick(cands)
    n_final = sum(c.final_correct for c in cands)
    return QuestionOutcome(
        question_id=q.question_id,
        db_id=q.db_id,
        difficulty=q.difficulty,
        missing_db=False,
        n_candidates=len(cands),
        n_final_correct=n_final,
        planner_at_1=None if greedy is None else greedy.correct,
        pipeline_at_1=None if greedy is None else greedy.final_correct,
        # expected single-sample accuracy at the sampling temperature: the greedy one is excluded
        sample_at_1=(sum(c.correct for c in sampled) / len(sampled)) if sampled else None,
        pass_at_k=n_final > 0,
        majority=pick is not None and pick.final_correct,
    )


@dataclass(frozen=True)
class MetricSummary:
    """Means over scored questions; ``n_defined`` says how many questions each mean covers."""

    n_total: int  # questions seen
    n_missing_db: int  # of which the database was missing
    n_scored: int  # questions in the denominator (missing ones included unless skipped)
    k: int | None  # the common number of candidates K (None when it varies)
    values: dict[str, float | None]
    n_defined: dict[str, int]
    n_error: int = 0  # error records (scored wrong)

    @property
    def pass_label(self) -> str:
        """Column name of the oracle, e.g. ``pass@8``."""
        return f"pass@{self.k}" if self.k is not None else "pass@K"


def summarize(
    outcomes: Iterable[QuestionOutcome],
    *,
    missing: MissingPolicy = "wrong",
    ks: Sequence[int] = (),
) -> MetricSummary:
    """Aggregate outcomes; ``ks`` adds unbiased ``pass@k`` estimates (k < K) to the values."""
    outs = list(outcomes)
    if missing not in ("wrong", "skip"):
        raise ValueError(f"missing must be 'wrong' or 'skip', got {missing!r}")
    scored = [o for o in outs if not (missing == "skip" and o.missing_db)]
    sizes = {o.n_candidates for o in outs if not (o.missing_db or o.error)}
    names = [*METRICS, *(f"pass@{k}" for k in ks)]
    values: dict[str, float | None] = {}
    n_defined: dict[str, int] = {}
    for name in names:
        vals = [v for o in scored if (v := o.value(name)) is not None]
        n_defined[name] = len(vals)
        values[name] = sum(vals) / len(vals) if vals else None
    return MetricSummary(
        n_total=len(outs),
        n_missing_db=sum(o.missing_db for o in outs),
        n_scored=len(scored),
        k=sizes.pop() if len(sizes) == 1 else None,
        values=values,
        n_defined=n_defined,
        n_error=sum(o.error for o in outs),
    )


def _difficulty_rank(name: str) -> tuple[int, str]:
    low = name.lower()
    return (_DIFFICULTY_ORDER.index(low), "") if low in _DIFFICULTY_ORDER else (len(_DIFFICULTY_ORDER), low)


def summarize_by(
    outcomes: Iterable[QuestionOutcome],
    key: Callable[[QuestionOutcome], str] = lambda o: o.difficulty,
    *,
    missing: MissingPolicy = "wrong",
    ks: Sequence[int] = (),
) -> dict[str, MetricSummary]:
    """One summary per group (by difficulty unless ``key`` says otherwise), in a stable order."""
    groups: dict[str, list[QuestionOutcome]] = {}
    for o in outcomes:
        groups.setdefault(key(o), []).append(o)
    return {
        name: summarize(groups[name], missing=missing, ks=ks) for name in sorted(groups, key=_difficulty_rank)
    }


def score_records(records: Iterable[RolloutRecord]) -> list[QuestionOutcome]:
    """Outcomes of many records; duplicate question ids are an error (records are keyed by id)."""
    out: list[QuestionOutcome] = []
    seen: set[str] = set()
    for rec in records:
        if rec.question_id in seen:
            raise ValueError(f"question {rec.question_id} appears twice")
        seen.add(rec.question_id)
        out.append(question_outcome(rec))
    return out
