"""Compact label fixtures -> RolloutRecords (used by the other ``test_labels_*`` modules), and
tests that pin what the compact form means (gate and final result of a branch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from matsql.agents import validator
from matsql.labels.prompts import make_prompt_fn
from matsql.records import (
    AgentOutput,
    Branch,
    Candidate,
    Critique,
    ExecInfo,
    Fix,
    Question,
    RolloutRecord,
)

FIXTURES = Path(__file__).parent / "fixtures" / "labels"
VALIDATOR_KEYS = {"sel": "val-sel", "cond": "val-cond"}


def fake_schema(db_id: str) -> str:
    return f"CREATE TABLE t_{db_id} (a INTEGER, b TEXT);"


PROMPT_FN = make_prompt_fn(fake_schema)


def load_fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / name).read_text(encoding="utf-8"))


def _exec(status: str, rows: str | None) -> ExecInfo:
    if status == "ok":
        return ExecInfo(status="ok", rows_digest=rows, n_rows=1, preview=f"({rows},)")
    if status == "no_sql":
        return ExecInfo(status="no_sql")
    return ExecInfo(status="error", error="no such column: nope")


def _fix(spec: bool | dict[str, Any], ci: int, bi: int, k: int) -> Fix:
    if isinstance(spec, bool):
        spec = {"correct": spec}
    correct = bool(spec["correct"])
    text = spec.get("text", f"fix c{ci} b{bi} #{k}")
    sql = spec["sql"] if "sql" in spec else f"SELECT fixed_{ci}_{bi}_{k} FROM t"
    rows = spec.get("rows", "gold" if correct else f"wrong:{text}")
    info = _exec("ok", rows) if sql is not None else _exec("no_sql", None)
    return Fix(text=text, sql=sql, exec=info, correct=correct and sql is not None)


def _branch(spec: dict[str, Any], cand: Candidate, bi: int) -> Branch:
    crits = {
        agent: Critique(agent=agent, text=spec[key], verdict=validator.parse(spec[key]))
        for key, agent in VALIDATOR_KEYS.items()
        if key in spec
    }
    fixes = [_fix(f, cand.index, bi, k) for k, f in enumerate(spec.get("fixes", []))]
    gate = spec.get("gate", any(c.verdict == "incorrect" for c in crits.values()))
    b = Branch(critiques=crits, gate=gate, fixes=fixes)
    if gate and fixes and fixes[0].sql is not None:
        b.final_sql, b.final_exec, b.final_correct = fixes[0].sql, fixes[0].exec, fixes[0].correct
    else:
        b.final_sql, b.final_exec, b.final_correct = cand.planner.sql, cand.exec, cand.correct
    if "final_correct" in spec:
        b.final_correct = bool(spec["final_correct"])
    return b


def build_record(spec: dict[str, Any]) -> RolloutRecord:
    qid = spec["id"]
    q = Question(
        question_id=qid,
        db_id=spec.get("db", "db"),
        question=f"question {qid}?",
        gold_sql=spec.get("gold", "SELECT gold FROM t"),
        benchmark="fake",
    )
    cands = []
    for ci, cs in enumerate(spec["candidates"]):
        sql = cs.get("sql")
        correct = bool(cs.get("correct", False))
        status = cs.get("exec", "ok")
        rows = cs.get("rows", "gold" if correct else f"wrong:{sql}")
        cand = Candidate(
            index=ci,
            planner=AgentOutput(text=cs.get("text", f"plan: {sql}"), sql=sql),
            exec=_exec(status, rows),
            correct=correct,
        )
        cand.branches = [_branch(bs, cand, bi) for bi, bs in enumerate(cs.get("branches", []))]
        cands.append(cand)
    return RolloutRecord(question=q, gold_exec=_exec("ok", "gold"), candidates=cands)


def build_records(specs: list[dict[str, Any]]) -> list[RolloutRecord]:
    return [build_record(s) for s in specs]


# -- what the compact form means ----------------------------------------------------------


def test_gate_defaults_to_critique_gating_and_final_follows_the_gated_pipeline() -> None:
    rec = build_record(
        {
            "id": "q",
            "candidates": [
                {
                    "sql": "SELECT a FROM t",
                    "correct": False,
                    "branches": [
                        {"sel": "x. Conclude: incorrect", "fixes": [True]},
                        {"sel": "x. Conclude: correct", "fixes": [True]},
                        {
                            "sel": "x. Conclude: incorrect",
                            "fixes": [{"text": "t", "sql": None, "correct": True}],
                        },
                    ],
                }
            ],
        }
    )
    b = rec.candidates[0].branches
    assert [x.gate for x in b] == [True, False, True]
    assert [x.final_correct for x in b] == [True, False, False]
    assert b[2].fixes[0].correct is False  # a fix without SQL cannot be correct
    assert b[1].final_sql == "SELECT a FROM t"


def test_fixture_files_are_valid_yaml_with_cases() -> None:
    files = sorted(FIXTURES.glob("*.yaml"))
    assert {f.stem for f in files} >= {"independent", "collab", "collab_v2", "joint", "fixer", "selector"}
    for f in files:
        data = load_fixture(f.name)
        assert data.get("cases"), f"{f} has no cases"
