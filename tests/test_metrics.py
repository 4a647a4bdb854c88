"""Metrics over rollout records: hand-written fixtures (tests/fixtures/metrics) -> expected metrics."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from matsql.evaluate.metrics import (
    METRICS,
    MetricSummary,
    QuestionOutcome,
    majority_pick,
    pass_at_k_unbiased,
    question_outcome,
    score_records,
    summarize,
    summarize_by,
)
from matsql.records import RolloutRecord

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
CASES = sorted(FIXTURES.glob("case_*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _records() -> list[RolloutRecord]:
    return [RolloutRecord.model_validate(_load(p)["record"]) for p in CASES]


def _check_summary(got: MetricSummary, want: dict) -> None:
    for key in ("n_total", "n_missing_db", "n_scored", "k"):
        assert getattr(got, key) == want[key], key
    for name, value in want["values"].items():
        assert got.values[name] == pytest.approx(value, abs=1e-12), name
    for name, count in want.get("n_defined", {}).items():
        assert got.n_defined[name] == count, name


def test_fixtures_exist() -> None:
    assert len(CASES) >= 7, f"metric fixtures not found in {FIXTURES}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_question_outcome(path: Path) -> None:
    case = _load(path)
    out = question_outcome(RolloutRecord.model_validate(case["record"]))
    want = case["expected"]
    assert out.missing_db == want["missing_db"]
    assert out.n_candidates == want["n_candidates"]
    assert out.n_final_correct == want["n_final_correct"]
    for name in METRICS:
        expected = want[name]
        got = out.value(name)
        if expected is None:
            assert got is None, name
        else:
            assert got == pytest.approx(float(expected), abs=1e-12), name


def test_summary_overall_and_by_difficulty() -> None:
    want = _load(FIXTURES / "summary.json")
    outs = score_records(_records())
    _check_summary(summarize(outs), want["wrong"])
    _check_summary(summarize(outs, missing="skip"), want["skip"])
    by = summarize_by(outs)
    assert list(by) == list(want["by_difficulty_wrong"])  # simple, moderate, challenging order
    for diff, w in want["by_difficulty_wrong"].items():
        _check_summary(by[diff], w)


def test_pass_label_uses_common_k() -> None:
    rec = RolloutRecord.model_validate(_load(FIXTURES / "case_a_greedy_fixed.json")["record"])
    assert summarize([question_outcome(rec)]).pass_label == "pass@4"
    assert summarize(score_records(_records())).pass_label == "pass@K"


def test_duplicate_question_is_an_error() -> None:
    rec = _records()[0]
    with pytest.raises(ValueError, match=rec.question_id):
        score_records([rec, rec])


def test_majority_pick_ignores_failed_and_breaks_ties_by_index() -> None:
    rec = RolloutRecord.model_validate(_load(FIXTURES / "case_e_tie_by_index.json")["record"])
    pick = majority_pick(rec.candidates)
    assert pick is not None and pick.index == 0
    # Without candidate 0 the tie (aa: 1, 3 vs zz: 2) goes to index 1.
    rest = [c for c in rec.candidates if c.index != 0]
    pick = majority_pick(rest)
    assert pick is not None and pick.index == 1


def _brute_pass_at_k(correct: list[bool], k: int) -> float:
    subsets = list(combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 7))
def test_unbiased_pass_at_k_matches_subset_enumeration(n: int) -> None:
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k_unbiased(n, c, k) == pytest.approx(_brute_pass_at_k(correct, k), abs=1e-12)


def test_pass_at_int_on_records() -> None:
    for rec in _records():
        out = question_outcome(rec)
        if out.missing_db:
            assert out.value("pass@1") == 0.0
            continue
        finals = [c.final_correct for c in rec.candidates]
        for k in range(1, len(finals) + 1):
            assert out.value(f"pass@{k}") == pytest.approx(_brute_pass_at_k(finals, k), abs=1e-12)
        assert out.value(f"pass@{len(finals)}") == out.value("pass@K")
        # pass@1 over all candidates is the mean final correctness.
        assert out.value("pass@1") == pytest.approx(sum(finals) / len(finals))
        with pytest.raises(ValueError, match=rec.question_id):
            out.value(f"pass@{len(finals) + 1}")


def test_unknown_metric_is_an_error() -> None:
    out = question_outcome(_records()[0])
    with pytest.raises(ValueError, match="unknown metric"):
        out.value("accuracy")


def test_summary_with_unbiased_ks() -> None:
    outs = [
        QuestionOutcome("q1", "d", "simple", False, 4, 1, True, True, 0.25, True, True),
        QuestionOutcome("q2", "d", "simple", False, 4, 0, False, False, 0.0, False, False),
    ]
    s = summarize(outs, ks=(2,))
    assert s.values["pass@2"] == pytest.approx((pass_at_k_unbiased(4, 1, 2) + 0.0) / 2)
    assert s.k == 4
