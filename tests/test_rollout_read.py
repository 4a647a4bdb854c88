"""Reading rollout files (every command's one reader): headers kept apart, bad lines named,
duplicates refused across files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matsql.records import RolloutHeader, dumps
from matsql.rollout.io import RolloutFileError, benchmark_of, read_records, read_rollouts
from tests.test_labels_records import build_records

RECS = build_records(
    [{"id": f"q{i}", "candidates": [{"sql": "SELECT 1", "correct": True}]} for i in range(3)]
)


def _header(bench: str = "spider-dev") -> str:
    return dumps(
        RolloutHeader(matsql_version="0", config_hash="h", config={"benchmark": bench}, created="now")
    )


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_records_and_headers_across_files(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_header(), dumps(RECS[0]), "", dumps(RECS[1])])
    b = _write(tmp_path / "b.jsonl", [dumps(RECS[2])])
    records, headers = read_rollouts([a, b])
    assert [r.question_id for r in records] == ["q0", "q1", "q2"]
    assert records[1] == RECS[1]
    assert len(headers) == 1 and benchmark_of(headers, records) == "spider-dev"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r"b\.jsonl:2: invalid JSON"),
        ("[1, 2]", r"b\.jsonl:2: expected a JSON object"),
        (json.dumps({"question": {}}), r"b\.jsonl:2: not a rollout record \(question\.question_id"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, match: str) -> None:
    b = _write(tmp_path / "b.jsonl", [dumps(RECS[0]), line])
    with pytest.raises(RolloutFileError, match=match):
        read_rollouts([b])


def test_duplicate_question_names_both_places(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_header(), dumps(RECS[0])])
    b = _write(tmp_path / "b.jsonl", [dumps(RECS[0])])
    with pytest.raises(RolloutFileError, match=r"b\.jsonl:1: question q0 already read at .*a\.jsonl:2"):
        read_rollouts([a, b])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RolloutFileError, match="not found"):
        read_rollouts([tmp_path / "nope.jsonl"])


def test_benchmark_from_questions_and_conflicts(tmp_path: Path) -> None:
    assert benchmark_of([], RECS) == "fake"  # Question.benchmark of the fixtures
    hs = [RolloutHeader.model_validate_json(_header(n)) for n in ("spider-dev", "bird-dev")]
    with pytest.raises(RolloutFileError, match="several benchmarks"):
        benchmark_of(hs, RECS)


def test_one_file_reads_as_its_records_and_a_duplicate_names_both_lines(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [_header(), dumps(RECS[0]), dumps(RECS[1])])
    assert read_records(a) == list(RECS[:2])
    _write(a, [_header(), dumps(RECS[0]), dumps(RECS[1]), dumps(RECS[0])])
    with pytest.raises(RolloutFileError, match=r"a\.jsonl:4: question q0 already read at .*a\.jsonl:2"):
        read_records(a)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
