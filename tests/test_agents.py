"""Agents: parsers never crash (fixture-driven) and prompts carry what each agent must see."""

from pathlib import Path

import pytest
import yaml

from matsql.agents import fixer, planner, selector, validator
from matsql.records import Critique, ExecInfo, Question

CASES = yaml.safe_load((Path(__file__).parent / "fixtures/agents/parse_cases.yaml").read_text())
Q = Question(
    question_id="q1", db_id="db", question="Names of singers?", evidence="singer = artist", gold_sql="x"
)


@pytest.mark.parametrize("case", CASES["planner"], ids=lambda c: repr(c["text"][:30]))
def test_planner_parse(case):
    assert planner.parse(case["text"]) == case["sql"]


@pytest.mark.parametrize("case", CASES["validator"], ids=lambda c: repr(c["text"][:30]))
def test_validator_parse(case):
    assert validator.parse(case["text"]) == case["verdict"]


@pytest.mark.parametrize("case", CASES["fixer"], ids=lambda c: repr(c["text"][:30]))
def test_fixer_parse(case):
    assert fixer.parse(case["text"]) == case["sql"]


@pytest.mark.parametrize("case", CASES["selector"], ids=lambda c: repr(c["text"][:30]))
def test_selector_parse(case):
    assert selector.parse(case["text"], case["n"]) == case["index"]


def test_validator_prompts_have_paper_prefixes_and_content():
    info = ExecInfo(status="ok", n_rows=2, preview="Ann\nBob")
    for agent, prefix in (("val-sel", "SELECT."), ("val-cond", "CONDITION.")):
        p = validator.build(agent, Q, "# Table: singer", "SELECT name FROM singer", info)
        user = p.as_messages()[-1]["content"]
        assert p.prefix == prefix
        assert "SELECT name FROM singer" in user and "Ann" in user and "singer = artist" in user
        assert "gold" not in user.lower()
    with pytest.raises(ValueError, match="unknown validator"):
        validator.build("val-x", Q, "", "SELECT 1", info)


def test_fixer_prompt_carries_the_actual_critiques_in_fixed_order():
    crit = {
        "val-cond": Critique(
            agent="val-cond", text=" Missing WHERE age > 30.\nConclude: incorrect", verdict="incorrect"
        ),
        "val-sel": Critique(agent="val-sel", text=" Name is right.\nConclude: correct", verdict="correct"),
    }
    user = fixer.build(
        Q, "s", "SELECT name FROM singer", ExecInfo(status="error", error="no such column"), crit
    )
    text = user.as_messages()[-1]["content"]
    assert "Missing WHERE age > 30." in text and "Name is right." in text
    assert text.index("[val-sel]") < text.index("[val-cond]")
    assert "no such column" in text
    assert user.prefix == "FIXED SQL:"
    empty = fixer.build(Q, "s", "SELECT 1", None, {}).as_messages()[-1]["content"]
    assert "(no feedback)" in empty


def test_selector_prompt_numbers_options_and_shows_verdicts():
    opts = [
        selector.Option("SELECT 1", ExecInfo(status="ok", n_rows=1, preview="1")),
        selector.Option("SELECT 2", ExecInfo(status="ok", n_rows=1, preview="2"), {"val-sel": "correct"}),
    ]
    text = selector.build(Q, "s", opts).as_messages()[-1]["content"]
    assert "Candidate 1:" in text and "Candidate 2:" in text and "val-sel: correct" in text
    assert selector.parse(selector.render_target(1), 2) == 1


def test_render_targets_round_trip():
    assert planner.parse(planner.render_target("g", "c", "t", "SELECT 7")) == "SELECT 7"
    assert validator.parse(validator.render_target("fine", "correct")) == "correct"
    assert fixer.parse(fixer.render_target("SELECT 9")) == "SELECT 9"
