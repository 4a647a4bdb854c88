"""Rule-based validator teacher: data-driven cases (tests/fixtures/train/teacher_cases.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matsql.agents import validator
from matsql.labels.teacher import critique, critiques
from matsql.records import ExecInfo

CASES = yaml.safe_load((Path(__file__).parent / "fixtures" / "train" / "teacher_cases.yaml").read_text())
GOLD = ExecInfo(status="ok", rows_digest="gold", n_rows=3)


def cand_exec(result: str) -> ExecInfo | None:
    if result == "same":
        return ExecInfo(status="ok", rows_digest="gold", n_rows=3)
    if result == "different":
        return ExecInfo(status="ok", rows_digest="other", n_rows=2)
    if result == "empty":
        return ExecInfo(status="ok", rows_digest="empty", n_rows=0)
    if result.startswith("error:"):
        return ExecInfo(status="error", error=result.removeprefix("error:"))
    if result == "timeout":
        return ExecInfo(status="timeout")
    if result == "none":
        return ExecInfo(status="no_sql")
    raise ValueError(result)


@pytest.mark.parametrize(
    ("case", "agent"),
    [(c, a) for c in CASES for a in c["expect"]],
    ids=lambda x: x["name"] if isinstance(x, dict) else x,
)
def test_teacher_case(case, agent):
    want = case["expect"][agent]
    tc = critique(agent, case["candidate"], cand_exec(case["result"]), case["gold"], GOLD)
    assert tc is not None
    assert (tc.verdict, tc.reason) == (want["verdict"], want["reason"]), tc.text
    if "contains" in want:
        assert want["contains"] in tc.text
    # paper format: the continuation after the validator prefix, parsed back to the same verdict
    assert tc.text.endswith(f"\nConclude: {tc.verdict}")
    assert validator.parse(validator.prefix(agent) + tc.text) == tc.verdict


def test_verdict_is_execution_grounded_not_structural():
    same_text_other_rows = critique(
        "val-sel",
        "SELECT name FROM singer",
        ExecInfo(status="ok", rows_digest="x"),
        "SELECT name FROM singer",
        GOLD,
    )
    assert same_text_other_rows.verdict == "incorrect"
    ok_without_digest = critique(
        "val-sel", "SELECT name FROM singer", ExecInfo(status="ok"), "SELECT name FROM singer", GOLD
    )
    assert ok_without_digest.verdict == "incorrect"


def test_no_critique_without_a_gold_result():
    failed = ExecInfo(status="error", error="no such table")
    assert critique("val-cond", "SELECT 1", cand_exec("same"), "SELECT x FROM y", failed) is None
    assert critiques("SELECT 1", cand_exec("same"), "SELECT x FROM y", None) == {}


def test_unknown_agent_is_an_error():
    with pytest.raises(ValueError, match="fixer"):
        critique("fixer", "SELECT 1", cand_exec("same"), "SELECT 1", GOLD)


def test_every_phrase_formats_with_the_known_placeholders():
    """A typo in templates/teacher.yaml ({gold} written {gld}) fails here, not mid-labelling."""
    from matsql.labels.teacher import phrases

    for section in ("common", "val-sel", "val-cond"):
        for key, text in phrases()[section].items():
            if isinstance(text, str):
                assert text.format(gold="G", cand="C", detail="D", error="E"), (section, key)
