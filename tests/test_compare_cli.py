"""`matsql compare` end to end on small outcome/rollout files, and the outcome file readers it uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from matsql.evaluate.commands import compare
from matsql.evaluate.outcomes import (
    OutcomeError,
    OutcomeRow,
    detect_kind,
    load_arm,
    load_rows,
    read_outcome_rows,
    write_outcomes,
)
from matsql.evaluate.statistics import compare_arms
from matsql.records import RolloutHeader, RolloutRecord, dumps

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"

app = typer.Typer()
app.command("compare")(compare)
app.command("noop")(lambda: None)  # a second command keeps `compare` a sub-command
runner = CliRunner()


def _rows(correct: np.ndarray, prefix: str = "q", n_db: int = 7) -> list[OutcomeRow]:
    return [
        OutcomeRow(
            question_id=f"{prefix}{i:03d}", correct=float(c), db_id=f"db{i % n_db}", difficulty="simple"
        )
        for i, c in enumerate(correct)
    ]


def _arm_files(tmp_path: Path, n: int = 200, acc_a: float = 0.8, acc_b: float = 0.4) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    a = rng.random(n) < acc_a
    b = rng.random(n) < acc_b
    pa = write_outcomes(tmp_path / "a.jsonl", _rows(a))
    pb = write_outcomes(tmp_path / "b.jsonl", _rows(b))
    return pa, pb


def _invoke(*args: str):
    return runner.invoke(app, ["compare", *args])


def test_compare_clear_win_passes_min_gap_and_writes_artefacts(tmp_path: Path) -> None:
    pa, pb = _arm_files(tmp_path)
    out = tmp_path / "cmp"
    res = _invoke(str(pa), str(pb), "--min-gap", "5", "--n-resamples", "2000", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["claim"] is True and payload["min_gap_pp"] == 5.0
    assert payload["ci_low"] * 100 > 5.0
    assert payload["n"] == 200 and payload["n_clusters"] == 7
    for stem in ("difference", "bootstrap"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem
        assert "<svg" in (out / f"{stem}.svg").read_text(), stem
    assert (out / "compare.md").is_file()
    sources = json.loads((out / "compare.json").read_text())["sources"]
    assert sources["A"] == f"{tmp_path.name}/{pa.name}"  # portable: from the folder shared with OUT
    assert str(tmp_path) not in (out / "compare.md").read_text()
    assert json.loads((out / "compare.json").read_text())["ci_low"] == payload["ci_low"]
    md = (out / "compare.md").read_text()
    assert "A beats B by more than 5 pp" in md and "exact McNemar" in md


def test_compare_matches_library_result(tmp_path: Path) -> None:
    pa, pb = _arm_files(tmp_path, n=150, acc_a=0.6, acc_b=0.55)
    res = _invoke(str(pa), str(pb), "--n-resamples", "3000", "--seed", "7", "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    A = {r.question_id: r.correct for r in read_outcome_rows(pa)}
    B = {r.question_id: r.correct for r in read_outcome_rows(pb)}
    lib = compare_arms(
        A, B, {r.question_id: r.db_id for r in read_outcome_rows(pa)}, n_resamples=3000, seed=7
    )
    for key in (
        "ex_a",
        "ex_b",
        "diff",
        "ci_low",
        "ci_high",
        "cluster_ci_low",
        "mcnemar_b",
        "mcnemar_c",
        "mcnemar_p",
    ):
        assert payload[key] == getattr(lib, key), key


def test_compare_min_gap_not_cleared_exits_1(tmp_path: Path) -> None:
    pa, pb = _arm_files(tmp_path)
    res = _invoke(str(pa), str(pb), "--min-gap", "90", "--n-resamples", "500")
    assert res.exit_code == 1, res.output
    assert "not by more than 90 pp" in res.stdout


def test_compare_without_gap_reports_loss_but_exits_0(tmp_path: Path) -> None:
    pa, pb = _arm_files(tmp_path)
    res = _invoke(str(pb), str(pa), "--n-resamples", "500", "--name-a", "indep", "--name-b", "collab")
    assert res.exit_code == 0, res.output
    assert "collab beats indep" in res.stdout


def test_compare_mismatched_questions(tmp_path: Path) -> None:
    pa = write_outcomes(tmp_path / "a.jsonl", _rows(np.array([1, 0, 1, 1])))
    rows_b = _rows(np.array([1, 1, 1, 0, 0]))[1:]  # drops q000, adds q004
    pb = write_outcomes(tmp_path / "b.jsonl", rows_b)
    res = _invoke(str(pa), str(pb), "--n-resamples", "100")
    assert res.exit_code == 2
    assert "only in A: q000" in res.stderr and "only in B: q004" in res.stderr
    res = _invoke(str(pa), str(pb), "--n-resamples", "100", "--intersect", "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert (payload["n"], payload["n_only_a"], payload["n_only_b"]) == (3, 1, 1)


def test_compare_seed_files_average_per_question(tmp_path: Path) -> None:
    s = [np.array([1, 0, 1, 0, 1, 1]), np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 0, 1, 1])]
    seeds = [write_outcomes(tmp_path / f"a{i}.jsonl", _rows(x)) for i, x in enumerate(s)]
    pb = write_outcomes(tmp_path / "b.jsonl", _rows(np.array([0, 0, 1, 1, 1, 0])))
    res = _invoke(",".join(map(str, seeds)), str(pb), "--n-resamples", "200", "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    mean_a = np.mean(np.stack(s), axis=0)
    assert payload["ex_a"] == pytest.approx(mean_a.mean())
    assert payload["seeds_a"]["ex"] == pytest.approx([x.mean() for x in s])
    assert payload["seeds_a"]["std"] == pytest.approx(np.std([x.mean() for x in s], ddof=1))
    assert payload["seeds_b"] is None
    assert payload["mcnemar_kind"].startswith("exact sign test")
    d = mean_a - np.array([0, 0, 1, 1, 1, 0])
    assert (payload["mcnemar_b"], payload["mcnemar_c"]) == (int((d > 0).sum()), int((d < 0).sum()))


def test_compare_seed_files_must_cover_same_questions(tmp_path: Path) -> None:
    p0 = write_outcomes(tmp_path / "s0.jsonl", _rows(np.array([1, 0, 1])))
    p1 = write_outcomes(tmp_path / "s1.jsonl", _rows(np.array([1, 0])))
    pb = write_outcomes(tmp_path / "b.jsonl", _rows(np.array([1, 0, 1])))
    res = _invoke(f"{p0},{p1}", str(pb))
    assert res.exit_code == 2
    assert "q002" in res.stderr and "s1.jsonl" in res.stderr


def test_compare_bad_line_names_file_and_line(tmp_path: Path) -> None:
    pa, pb = _arm_files(tmp_path, n=5)
    lines = pa.read_text().splitlines()
    lines[2] = lines[2].replace('"correct": ', '"correct": 1.5, "x": ')
    pa.write_text("\n".join(lines) + "\n")
    res = _invoke(str(pa), str(pb))
    assert res.exit_code == 2
    assert f"{pa}:3" in res.stderr and "[0, 1]" in res.stderr


def _write_rollout(path: Path, records: list[RolloutRecord]) -> Path:
    header = RolloutHeader(matsql_version="0", config_hash="h", config={}, created="2025-01-01T00:00:00Z")
    path.write_text("\n".join([dumps(header), *(dumps(r) for r in records)]) + "\n", encoding="utf-8")
    return path


def _fixture_records() -> list[RolloutRecord]:
    return [
        RolloutRecord.model_validate(json.loads(p.read_text())["record"])
        for p in sorted(FIXTURES.glob("case_*.json"))
    ]


def test_compare_rollout_files_by_metric(tmp_path: Path) -> None:
    recs = _fixture_records()
    pa = _write_rollout(tmp_path / "a.jsonl", recs)
    pb = _write_rollout(tmp_path / "b.jsonl", recs)
    res = _invoke(str(pa), str(pb), "--metric", "pass@k", "--n-resamples", "100", "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    want = json.loads((FIXTURES / "summary.json").read_text())["wrong"]["values"]
    assert payload["ex_a"] == pytest.approx(want["pass@K"])
    assert payload["diff"] == 0.0 and payload["mcnemar_p"] == 1.0
    # planner@1 is undefined for questions without a greedy candidate: an error, not a silent drop.
    res = _invoke(str(pa), str(pb), "--metric", "planner@1")
    assert res.exit_code == 2 and "q-b" in res.stderr
    res = _invoke(str(pa), str(pb))
    assert res.exit_code == 2 and "choose a metric" in res.stderr


# --- outcome files (the input of compare) -----------------------------------------------


def test_outcomes_roundtrip_and_kind(tmp_path: Path) -> None:
    rows = [
        OutcomeRow("q1", 1.0, "db1", "simple", {"pick": 2}),
        OutcomeRow("q2", 0.0, "db2", "hard"),
        OutcomeRow("q3", 2 / 3, "db2", "hard"),
    ]
    p = write_outcomes(tmp_path / "sub" / "o.jsonl", rows)
    first = json.loads(p.read_text().splitlines()[0])
    assert first == {"question_id": "q1", "db_id": "db1", "difficulty": "simple", "correct": True, "pick": 2}
    assert read_outcome_rows(p) == rows
    assert detect_kind(p) == "outcomes"
    assert detect_kind(_write_rollout(tmp_path / "r.jsonl", _fixture_records())) == "rollout"
    assert not list(p.parent.glob(".*.tmp"))


def test_rollout_rows_score_missing_db_wrong_or_skip(tmp_path: Path) -> None:
    p = _write_rollout(tmp_path / "r.jsonl", _fixture_records())
    rows = {r.question_id: r for r in load_rows(p, "majority")}
    assert rows["q-d"].correct == 0.0 and rows["q-d"].extra == {"missing_db": True}
    assert "q-d" not in {r.question_id for r in load_rows(p, "majority", missing="skip")}
    arm = load_arm([p], "sample@1")
    assert arm.db_of["q-a"] == "db1" and arm.correct["q-b"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "invalid JSON"),
        ('{"correct": true}', "question_id"),
        ('{"question_id": "q9"}', "no 'correct' field"),
        ('{"question_id": "q9", "correct": "yes"}', "must be a bool or a number"),
        ('{"question_id": "q1", "correct": false}', "already on line 1"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_outcome_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "o.jsonl"
    p.write_text('{"question_id": "q1", "correct": true}\n\n' + line + "\n")
    with pytest.raises(OutcomeError, match=message) as err:
        read_outcome_rows(p)
    assert f"{p}:3" in str(err.value)


def test_bad_rollout_record_names_line(tmp_path: Path) -> None:
    p = _write_rollout(tmp_path / "r.jsonl", _fixture_records()[:2])
    with p.open("a") as fh:
        fh.write('{"question": {"question_id": "x"}, "candidates": []}\n')
    with pytest.raises(ValueError, match=rf"{p}:4: not a rollout record"):
        load_rows(p, "majority")


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(OutcomeError, match="no such file"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(OutcomeError, match="empty file"):
        load_rows(tmp_path / "empty.jsonl")
