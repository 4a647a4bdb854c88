"""EX of a predictions file over a benchmark: the scoring behind ``matsql eval-sql``.

Every selected question counts in the denominator. A question is wrong when its database is
missing (policy "wrong"), when it has no prediction, when the prediction errors or times out, or
when the gold query itself fails (reported separately: a benchmark problem, not a model one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from matsql.records import Question
from matsql.sql.execute import ExecResult
from matsql.sql.executor import results_match

RULES = {
    "bird": "set equality of result rows (BIRD official)",
    "spider": "rows as a bag, columns in any order, row order when the gold query has ORDER BY "
    "(Spider official)",
}


def official_rule(benchmark: str) -> str:
    """The EX rule a benchmark's own evaluation script applies: ``spider`` for Spider (and its
    variants), ``bird`` (set equality) for BIRD and the built-in minibench."""
    return "spider" if benchmark.startswith("spider") else "bird"


def rule_label(mode: str, benchmark: str) -> str:
    """``spider rule: ... (Spider official)``, saying when it is not the benchmark's own rule."""
    label = f"{mode} rule: {RULES.get(mode, mode)}"
    if mode != official_rule(benchmark):
        label += f"; NOT {benchmark}'s official rule ({official_rule(benchmark)})"
    return label


Outcome = str  # "correct" | "bad_db" | "wrong" | "pred_error" | "pred_timeout" | "gold_failed" | "no_prediction" | "missing_db"


class RunsSql(Protocol):
    def run_many(self, items: Sequence[tuple[Any, str]]) -> list[ExecResult]: ...


@dataclass
class Split:
    n: int = 0
    correct: int = 0

    @property
    def ex(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class ExSummary:
    benchmark: str
    mode: str
    overall: Split
    by_difficulty: dict[str, Split]
    outcomes: dict[str, int]  # Outcome -> count
    n_questions: int  # in the benchmark
    n_skipped_missing_db: int  # left out by policy "skip"
    per_question: dict[str, Outcome] = field(default_factory=dict)
    bad_lines: list[str] = field(default_factory=list)  # predictions lines that were not usable

    @property
    def rule(self) -> str:
        return rule_label(self.mode, self.benchmark)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"] = self.rule
        d["official_rule"] = self.mode == official_rule(self.benchmark)
        d["overall"]["ex"] = self.overall.ex
        for k, s in self.by_difficulty.items():
            d["by_difficulty"][k]["ex"] = s.ex
        return d


def _judged(pred: ExecResult, gold: ExecResult, correct: bool) -> Outcome:
    """The outcome of an executor's judgement (its verdict already applies the EX rule)."""
    if getattr(gold, "bad_db", False) or getattr(pred, "bad_db", False):
        return "bad_db"
    if not gold.ok:
        return "gold_failed"
    if pred.status == "timeout":
        return "pred_timeout"
    if not pred.ok:
        return "pred_error"
    return "correct" if correct else "wrong"


def outcome_of(pred: ExecResult, gold: ExecResult, mode: str, gold_sql: str) -> Outcome:
    ok = pred.ok and gold.ok and results_match(pred, gold, mode, gold_sql)
    return _judged(pred, gold, ok)


def _texts(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def evaluate_predictions(
    questions: Sequence[Question],
    predictions: Mapping[str, str | Sequence[str]],
    db_paths: Mapping[str, Any],
    runner: RunsSql,
    *,
    benchmark: str,
    mode: str | None = None,
    n_questions: int | None = None,
) -> ExSummary:
    """Score ``questions`` (already selected by the missing-database policy). ``db_paths`` maps
    db_id -> file for databases that exist; a question whose db_id is absent is "missing_db".
    ``mode`` defaults to the benchmark's official rule (:func:`official_rule`)."""
    mode = mode or official_rule(benchmark)
    outcome: dict[str, Outcome] = {}
    jobs: list[Question] = []
    for q in questions:
        if q.db_id not in db_paths:
            outcome[q.question_id] = "missing_db"
        elif q.question_id not in predictions:
            outcome[q.question_id] = "no_prediction"
        else:
            jobs.append(q)
    # a question may carry several SQL texts (a rollout's K candidates: pass@K): it is correct if
    # any is; otherwise its outcome is its first text's
    texts = {q.question_id: _texts(predictions[q.question_id]) for q in jobs}
    pairs = [(q, sql) for q in jobs for sql in texts[q.question_id]]
    judge = getattr(runner, "judge_many", None)
    got: list[Outcome] = []
    if judge is not None:  # the executor compares inside its workers: rows never reach this process
        triples = [(db_paths[q.db_id], sql, q.gold_sql) for q, sql in pairs]
        got = [_judged(j.pred, j.gold, j.correct) for j in judge(triples, mode)]
    else:
        items = [(db_paths[q.db_id], sql) for q, sql in pairs] + [
            (db_paths[q.db_id], q.gold_sql) for q, _ in pairs
        ]
        results = runner.run_many(items)
        n = len(pairs)
        got = [outcome_of(results[i], results[n + i], mode, q.gold_sql) for i, (q, _) in enumerate(pairs)]
    for (q, _), o in zip(pairs, got, strict=True):
        prev = outcome.get(q.question_id)
        if prev is None or (o == "correct" and prev != "correct"):
            outcome[q.question_id] = o
    for q in jobs:
        outcome.setdefault(q.question_id, "no_prediction")  # an empty list of texts

    overall, by_diff = Split(), {}
    for q in questions:
        ok = outcome[q.question_id] == "correct"
        for s in (overall, by_diff.setdefault(q.difficulty, Split())):
            s.n += 1
            s.correct += ok
    return ExSummary(
        benchmark=benchmark,
        mode=mode,
        overall=overall,
        by_difficulty=by_diff,
        outcomes=dict(Counter(outcome[q.question_id] for q in questions)),
        n_questions=len(questions) if n_questions is None else n_questions,
        n_skipped_missing_db=(n_questions - len(questions)) if n_questions is not None else 0,
        per_question={q.question_id: outcome[q.question_id] for q in questions},
    )
