"""E1 fixer SFT mix (follow right critiques, resist wrong ones) from ``fixtures/labels/fixer.yaml``."""

from __future__ import annotations

from typing import Any

import pytest

from matsql.labels import sft_balance, sft_e1
from tests.test_labels_records import PROMPT_FN, build_records, fake_schema, load_fixture

SFT_CASES = load_fixture("fixer.yaml")["sft"]


@pytest.mark.parametrize("case", SFT_CASES, ids=[c["name"] for c in SFT_CASES])
def test_sft_examples_and_balance(case: dict[str, Any]) -> None:
    records = build_records(case["records"])
    examples = sft_e1(records, PROMPT_FN)
    got = sorted(
        (
            e.question_id,
            e.meta["candidate"],
            e.meta["branch"],
            e.meta["kind"],
            e.meta["target_source"],
            e.completion,
        )
        for e in examples
    )
    assert got == sorted(tuple(x) for x in case["expect"])
    assert sft_balance(records, examples) == case["balance"]
    for e in examples:
        rec = next(r for r in records if r.question_id == e.question_id)
        cand = rec.candidates[e.meta["candidate"]]
        want = PROMPT_FN("fixer", rec, cand, cand.branches[e.meta["branch"]])
        assert e.prompt == want.as_messages() and e.prefix == "FIXED SQL:"


def test_sft_prompt_carries_the_branch_critique_text() -> None:
    records = build_records(SFT_CASES[0]["records"])
    ex = next(
        e for e in sft_e1(records, PROMPT_FN) if e.meta["kind"] == "resist" and e.meta["candidate"] == 0
    )
    assert "wrong alarm. Conclude: incorrect" in ex.prompt[-1]["content"]


def test_sft_max_per_question_is_a_seeded_subset() -> None:
    records = build_records(SFT_CASES[0]["records"])
    full = sft_e1(records, PROMPT_FN)
    a = sft_e1(records, PROMPT_FN, max_per_question=2, seed=5)
    assert len(a) == 2
    assert all(x in full for x in a)
    assert a == sft_e1(records, PROMPT_FN, max_per_question=2, seed=5)
    with pytest.raises(ValueError):
        sft_e1(records, PROMPT_FN, max_per_question=0)


def test_sft_dedupes_identical_prompt_and_target() -> None:
    spec = {
        "id": "q",
        "candidates": [
            {
                "sql": "SELECT a FROM t",
                "correct": True,
                "branches": [{"sel": "ok. Conclude: correct"}, {"sel": "ok. Conclude: correct"}],
            }
        ],
    }
    assert len(sft_e1(build_records([spec]), PROMPT_FN)) == 1


def test_sft_stage_fixer_rows_and_e1_come_from_one_builder() -> None:
    """`train sft-data` fixer rows and the E1 mix are both :func:`fixer_sft`: the same prompt for
    the same candidate and critiques, and the same target where the rule agrees (a right SQL
    kept; a wrong one's gold, which E1 replaces by a correct fixer sample of the branch)."""
    from matsql.labels import sft_data
    from matsql.labels.fixer import fixer_sft

    records = build_records(SFT_CASES[0]["records"])
    assert records[0].gold_exec.ok
    e1 = {(e.candidate.index, e.branch): e for e in fixer_sft(records, PROMPT_FN)}
    stage = fixer_sft(records, PROMPT_FN, critiques="rollout", keep_correct=1.0)
    built = sft_data.fixer_examples(records, fake_schema, keep_correct=1.0, max_per_question=None)
    assert [r["prompt"] for r in built.rows] == [e.prompt.as_messages() for e in stage]
    assert [r["completion"][0]["content"] for r in built.rows] == [e.prompt.prefix + e.target for e in stage]
    wrong = {e.prompt: e for e in stage if not e.candidate.correct}
    assert set(wrong) == {e1[(1, 0)].prompt, e1[(1, 1)].prompt}
    assert {(e.target, e.source) for e in wrong.values()} == {(e1[(1, 1)].target, "gold")}
    assert e1[(1, 0)].source == "fix"
    right = {e.prompt: e for e in stage if e.candidate.correct}  # the uninformative branch too
    assert {(e.target, e.source) for e in right.values()} == {(e1[(0, 0)].target, "planner")}
    assert e1[(0, 0)].prompt in right and e1[(0, 1)].prompt in right and len(right) == 3
    teacher_only = fixer_sft(records, PROMPT_FN, critiques="teacher", keep_correct=1.0)
    assert teacher_only and all(e.branch is None and e.source in ("planner", "gold") for e in teacher_only)
