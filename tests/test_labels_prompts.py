"""The real prompt function (agents' builders + schema lookup) and the rebuilt-prompt check."""

from __future__ import annotations

import pytest

from matsql.agents.selector import build_options
from matsql.labels.prompts import check_prompts, make_prompt_fn
from matsql.records import record_prompt_digest
from tests.test_labels_records import build_records, fake_schema

RECS = build_records(
    [
        {
            "id": "q1",
            "db": "shop",
            "candidates": [
                {
                    "sql": "SELECT a FROM t",
                    "correct": False,
                    "branches": [
                        {
                            "sel": "S says. Conclude: incorrect",
                            "cond": "C says. Conclude: correct",
                            "fixes": [True],
                        }
                    ],
                },
                {"sql": "SELECT b FROM t", "correct": True, "exec": "error"},
            ],
        }
    ]
)


def test_prompts_carry_what_each_agent_sees() -> None:
    calls: list[str] = []

    def schema(db: str) -> str:
        calls.append(db)
        return fake_schema(db)

    fn = make_prompt_fn(schema)
    rec = RECS[0]
    c0, c1 = rec.candidates
    p = fn("planner", rec)
    assert "t_shop" in p.messages[-1][1] and "question q1?" in p.messages[-1][1]
    v = fn("val-cond", rec, c0)
    assert v.prefix == "CONDITION." and "SELECT a FROM t" in v.messages[-1][1]
    assert "no such column" in fn("val-sel", rec, c1).messages[-1][1]  # the execution error is shown
    f = fn("fixer", rec, c0, c0.branches[0])
    assert (
        "S says. Conclude: incorrect" in f.messages[-1][1]
        and "C says. Conclude: correct" in f.messages[-1][1]
    )
    s = fn("selector", rec, options=build_options(rec))
    assert "Candidate 1:" in s.messages[-1][1] and s.prefix == "Answer:"
    assert calls == ["shop"]  # schema looked up once per database


@pytest.mark.parametrize(
    ("agent", "kwargs"), [("val-sel", {}), ("fixer", {"candidate": None}), ("selector", {}), ("judge", {})]
)
def test_missing_inputs_are_errors(agent: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=agent if agent == "judge" else "needs"):
        make_prompt_fn(fake_schema)(agent, RECS[0], **kwargs)


def test_check_prompts_finds_a_schema_mismatch() -> None:
    rec = RECS[0].model_copy(deep=True)
    right = make_prompt_fn(fake_schema)
    c0 = rec.candidates[0]
    c0.planner.prompt_digest = record_prompt_digest(right("planner", rec))
    c0.branches[0].critiques["val-sel"].prompt_digest = record_prompt_digest(right("val-sel", rec, c0))
    c0.branches[0].fixes[0].prompt_digest = record_prompt_digest(right("fixer", rec, c0, c0.branches[0]))
    assert check_prompts([rec], right) == []
    wrong = make_prompt_fn(lambda db: "another schema")
    bad = check_prompts([rec], wrong)
    assert len(bad) == 3
    assert bad[1].startswith("question q1 candidate 0 branch 0 val-sel: rebuilt prompt digest")
    assert len(check_prompts([rec], wrong, limit=1)) == 1


def test_check_prompts_skips_unrecorded_digests_and_checks_the_first_fix() -> None:
    """An output without a recorded digest is not checked; the fixes of one branch share one
    prompt, so only the first is rebuilt; a changed prompt (here: another question text) is caught."""
    rec = RECS[0].model_copy(deep=True)
    fn = make_prompt_fn(fake_schema)
    c0 = rec.candidates[0]
    for c in rec.candidates:
        c.planner.prompt_digest = None
        for b in c.branches:
            for crit in b.critiques.values():
                crit.prompt_digest = None
            for f in b.fixes:
                f.prompt_digest = None
    assert check_prompts([rec], make_prompt_fn(lambda db: "another schema")) == []
    fix0 = c0.branches[0].fixes[0]
    fix0.prompt_digest = record_prompt_digest(fn("fixer", rec, c0, c0.branches[0]))
    c0.branches[0].fixes.append(fix0.model_copy(update={"prompt_digest": "not-checked"}))
    assert check_prompts([rec], fn) == []
    rec.question.question = "another question?"
    bad = check_prompts([rec], fn)
    assert len(bad) == 1 and bad[0].startswith("question q1 candidate 0 branch 0 fixer: rebuilt")
