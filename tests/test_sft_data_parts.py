"""`train sft-data --parts/--part/--parts-seed`: the SFT data of a study comes from its `sft` part
only, drawn exactly as `rollout --parts` draws it, so the planner never sees the gold SQL of the
label, held-out or evaluation questions (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.paths import BenchmarkDataError
from matsql.cli import app
from matsql.records import RolloutHeader, RolloutRecord, dumps
from matsql.rollout.config import RolloutConfig
from matsql.rollout.runner import select_questions
from tests.real_benchmarks import commands_share_the_loaded_benchmarks, real_benchmark
from tests.record_builders import cand, err, ok

runner = CliRunner()
PARTS = "sft=2000,label=2000,heldout=150,evaltrain=1000"  # experiments/study-spider-v2.yaml's vars.parts
NAMES = ("sft", "label", "heldout", "evaltrain")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Benchmark:
    """spider-train, loaded once per session and shared with the command under test."""
    try:
        loaded = real_benchmark("spider-train")
    except BenchmarkDataError as e:
        pytest.skip(f"spider-train data not here: {e}")
    commands_share_the_loaded_benchmarks(monkeypatch)
    return loaded


def _rollout_parts(bench: Benchmark) -> dict[str, set[str]]:
    """Each part's question ids as `matsql rollout` selects them (its code path, its default
    --missing wrong)."""
    qs = bench.select("wrong")
    return {
        name: {
            q.question_id
            for q in select_questions(qs, RolloutConfig(benchmark="spider-train", parts=PARTS, part=name))
        }
        for name in NAMES
    }


def _record(q, i: int) -> RolloutRecord:
    """A K=3 record: a right candidate, a wrong one left as it is, a failing one fixed."""
    gold = q.gold_sql
    cands = [
        cand(0, gold, ok("g"), True, verdicts=("correct", "correct")),
        cand(1, "SELECT 1", ok(f"w{i}"), False, verdicts=("correct", "incorrect")),
        cand(
            2,
            "SELECT nope",
            err(),
            False,
            verdicts=("incorrect", "correct"),
            fix=(gold, ok("g"), True),
            gate=True,
        ),
    ]
    return RolloutRecord(question=q, gold_exec=ok("g"), candidates=cands)


def _rows(out: Path, agent: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{agent}.jsonl").read_text().splitlines()]


def test_sft_data_of_the_sft_part_holds_only_its_questions(tmp_path: Path, bench: Benchmark) -> None:
    parts = _rollout_parts(bench)
    sizes = {"sft": 2000, "label": 2000, "heldout": 150, "evaltrain": 1000}
    for a in NAMES:  # the partition itself: disjoint, of the asked sizes
        assert len(parts[a]) == sizes[a]
        for b in NAMES:
            assert a == b or not parts[a] & parts[b]
    # a rollout over questions of every part (4 runnable questions each, as a whole-benchmark
    # rollout would hold): only the sft part's records may reach the validators, fixer and selector
    runnable = {q.question_id: q for q in bench.runnable}
    picked = {a: sorted(q for q in parts[a] if q in runnable)[:4] for a in NAMES}
    records = [_record(runnable[q], i) for i, q in enumerate(q for a in NAMES for q in picked[a])]
    header = RolloutHeader(
        matsql_version="0", config_hash="h", config={"benchmark": "spider-train"}, created="now"
    )
    roll = tmp_path / "roll.jsonl"
    roll.write_text("\n".join([dumps(header), *map(dumps, records)]) + "\n", encoding="utf-8")

    out = tmp_path / "sft-data"
    args = ["train", "sft-data", "--agent", "all", "--benchmark", "spider-train", "--rollouts", str(roll)]
    res = runner.invoke(
        app, [*args, "--parts", PARTS, "--part", "sft", "--parts-seed", "0", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "sft_data.json").read_text())
    assert meta["parts"] == {"parts": PARTS, "part": "sft", "parts_seed": 0, "questions": 2000}

    # the planner: every runnable sft question's gold SQL, nothing else
    planner = {r["question_id"] for r in _rows(out, "planner")}
    sft_runnable = parts["sft"] & set(runnable)
    unparsable = meta["agents"]["planner"]["skipped"].get("gold_unparsable", 0)
    assert planner <= sft_runnable and len(planner) == len(sft_runnable) - unparsable
    assert len(planner) > 1900
    # the agents learning from rollouts: only records of sft questions
    for agent in ("val-sel", "val-cond", "fixer", "selector"):
        got = {r["question_id"] for r in _rows(out, agent)}
        assert got and got <= set(picked["sft"]), agent
    for other in ("label", "heldout", "evaltrain"):
        seen = planner | {
            r["question_id"] for a in ("val-sel", "val-cond", "fixer", "selector") for r in _rows(out, a)
        }
        assert not seen & parts[other], other


def test_parts_and_part_go_together_and_a_bad_part_is_refused(tmp_path: Path, bench: Benchmark) -> None:
    base = [
        "train",
        "sft-data",
        "--agent",
        "planner",
        "--benchmark",
        "spider-train",
        "--out",
        str(tmp_path / "o"),
    ]
    res = runner.invoke(app, [*base, "--parts", PARTS])
    assert res.exit_code == 2 and "go together" in res.output
    res = runner.invoke(app, [*base, "--parts", PARTS, "--part", "dev"])
    assert res.exit_code == 2 and "not one of --parts" in res.output
    assert not (tmp_path / "o").exists()
