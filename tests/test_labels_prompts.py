"""The real prompt function (agents' builders + schema lookup) and the rebuilt-prompt check."""

from __future__ import annotations

import pytest

from matsql.agents.selector import build_options
from matsql.labels.prompts import check_prompts, make_prompt_fn
from matsql.records import record_prompt_digest
from matsql.rollout.io import read_records
from matsql.rollout.runner import run_rollout
from tests.rollout_fakes import CannedBackend, label_time_config, make_db, questions, sqlite_services
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


def test_prompts_rebuilt_from_a_real_rollout_match_its_recorded_digests(tmp_path) -> None:
    """The pipeline records ``record_prompt_digest`` of each prompt it sent; the labelers'
    prompt function, given the same schema lookup, must rebuild every one of them, and a wrong
    schema must be caught on every agent."""
    db = make_db(tmp_path / "music.sqlite")
    svc = sqlite_services(db, CannedBackend())
    cfg = label_time_config()
    run_rollout(questions(), cfg, svc, tmp_path / "r.jsonl", cfg.model_dump(mode="json"), show_progress=False)
    recs = [r for r in read_records(tmp_path / "r.jsonl") if r.candidates]
    recorded = [c.planner.prompt_digest for r in recs for c in r.candidates]
    recorded += [
        x.prompt_digest for r in recs for c in r.candidates for b in c.branches for x in b.critiques.values()
    ]
    recorded += [f.prompt_digest for r in recs for c in r.candidates for b in c.branches for f in b.fixes]
    assert len(recorded) > 50 and all(d and len(d) == 16 for d in recorded)
    assert check_prompts(recs, make_prompt_fn(svc.schema_of), limit=10**6) == []
    bad = check_prompts(recs, make_prompt_fn(lambda db_id: "another schema"), limit=10**6)
    assert {b.split(": rebuilt")[0].split()[-1] for b in bad} == {
        "planner",
        "val-sel",
        "val-cond",
        "fixer",
    }


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
