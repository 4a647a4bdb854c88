"""Per-question outcome files: the one format that statistics and reports consume.

An outcomes file is JSONL, one line per question::

    {"question_id": "bird-dev-0", "db_id": "california_schools", "difficulty": "simple", "correct": true}

``correct`` is a bool, or a float in [0, 1] (mean correctness over evaluation seeds); any other
fields are kept (selector picks files carry the picked index, for instance). The readers here
also accept rollout JSONL and turn it into outcomes through a named metric, so ``compare`` and
``report`` take either kind of file. Every bad line is reported as ``file:line: reason``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from matsql.evaluate.metrics import MissingPolicy, QuestionOutcome, question_outcome
from matsql.evaluate.statistics import show_ids
from matsql.fileio import atomic_write, atomic_write_gzip, is_gzip_path, iter_jsonl
from matsql.rollout.io import read_records

FileKind = Literal["rollout", "outcomes"]

#: Metric names that make sense for a rollout file (``pass@<int>`` is accepted as well).
ROLLOUT_METRICS = ("planner@1", "pipeline@1", "sample@1", "pass@k", "majority")


class OutcomeError(ValueError):
    """Bad input file; the message names the file and line."""


@dataclass(frozen=True)
class OutcomeRow:
    """One question's outcome: correctness in [0, 1] plus what the statistics need to pair/cluster."""

    question_id: str
    correct: float
    db_id: str = ""
    difficulty: str = "unknown"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        corr: bool | float = bool(self.correct) if self.correct in (0.0, 1.0) else self.correct
        return {
            "question_id": self.question_id,
            "db_id": self.db_id,
            "difficulty": self.difficulty,
            "correct": corr,
            **self.extra,
        }


def _json_lines(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; invalid JSON is an error naming the line."""
    if not path.is_file():
        raise OutcomeError(f"{path}: no such file")
    yield from iter_jsonl(path, OutcomeError)


def detect_kind(path: Path) -> FileKind:
    """Rollout file (header line or records with candidates) or outcomes/picks file."""
    for lineno, obj in _json_lines(path):
        if obj.get("kind") == "header" or ("question" in obj and "candidates" in obj):
            return "rollout"
        if "question_id" in obj:
            return "outcomes"
        raise OutcomeError(
            f"{path}:{lineno}: neither a rollout record (question, candidates) "
            "nor an outcome line (question_id, correct)"
        )
    raise OutcomeError(f"{path}: empty file")


def score_rollout(path: Path) -> list[QuestionOutcome]:
    """Question outcomes of a rollout file, read by ``matsql.rollout.io`` (header skipped,
    duplicate question ids rejected; its errors name the file and line)."""
    path = Path(path)
    if not path.is_file():
        raise OutcomeError(f"{path}: no such file")
    return [question_outcome(r) for r in read_records(path)]


def _as_correct(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0:
        return float(value)
    raise OutcomeError(f"{where}: {name!r} must be a bool or a number in [0, 1], got {value!r}")


def read_outcome_rows(path: Path, field_name: str = "correct") -> list[OutcomeRow]:
    """Rows of an outcomes/picks file, taking correctness from ``field_name``."""
    rows: list[OutcomeRow] = []
    seen: dict[str, int] = {}
    for lineno, obj in _json_lines(path):
        where = f"{path}:{lineno}"
        qid = obj.get("question_id")
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            raise OutcomeError(f"{where}: missing or invalid 'question_id'")
        qid = str(qid)
        if field_name not in obj:
            raise OutcomeError(f"{where}: question {qid} has no {field_name!r} field")
        if qid in seen:
            raise OutcomeError(f"{where}: question {qid} already on line {seen[qid]}")
        seen[qid] = lineno
        extra = {k: v for k, v in obj.items() if k not in ("question_id", "db_id", "difficulty", "correct")}
        if field_name != "correct" and "correct" in obj:
            extra["correct_field"] = obj["correct"]
        rows.append(
            OutcomeRow(
                question_id=qid,
                correct=_as_correct(obj[field_name], where, field_name),
                db_id=str(obj.get("db_id") or ""),
                difficulty=str(obj.get("difficulty") or "unknown"),
                extra=extra,
            )
        )
    return rows


def rows_from_outcomes(
    outcomes: Iterable[QuestionOutcome], metric: str, *, missing: MissingPolicy = "wrong", source: str = ""
) -> list[OutcomeRow]:
    """Outcome rows of one metric; an undefined value (e.g. planner@1 without greedy) is an error."""
    rows = []
    for o in outcomes:
        if o.missing_db and missing == "skip":
            continue
        try:
            v = o.value(metric)
        except ValueError as e:
            raise OutcomeError(f"{source}: {e}") from None
        if v is None:
            raise OutcomeError(
                f"{source}: question {o.question_id}: {metric} is undefined (no greedy candidate?)"
            )
        rows.append(
            OutcomeRow(
                question_id=o.question_id,
                correct=v,
                db_id=o.db_id,
                difficulty=o.difficulty,
                extra={"missing_db": True} if o.missing_db else {},
            )
        )
    return rows


def load_rows(path: Path, metric: str = "correct", *, missing: MissingPolicy = "wrong") -> list[OutcomeRow]:
    """Outcome rows from an outcomes/picks file (field ``metric``) or a rollout file (metric name)."""
    path = Path(path)
    if detect_kind(path) == "outcomes":
        return read_outcome_rows(path, metric)
    if metric == "correct":
        raise OutcomeError(
            f"{path}: a rollout file has no single 'correct'; choose a metric: "
            f"{', '.join(ROLLOUT_METRICS)} or pass@<int>"
        )
    return rows_from_outcomes(score_rollout(path), metric, missing=missing, source=str(path))


def write_outcomes(path: Path, rows: Iterable[OutcomeRow | Mapping[str, Any]]) -> Path:
    """Write an outcomes file atomically (temp file + rename), one JSON line per question; a
    ``.gz`` name is gzipped with a fixed header (the same rows, the same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_gzip(path) if is_gzip_path(path) else atomic_write(path) as fh:
        for row in rows:
            obj = row.to_json() if isinstance(row, OutcomeRow) else dict(row)
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


@dataclass(frozen=True)
class Arm:
    """One arm of a comparison: per-question mean correctness over its seed files."""

    name: str
    files: tuple[Path, ...]
    correct: dict[str, float]  # question_id -> mean correctness over seeds
    db_of: dict[str, str]  # question_id -> db_id ("" when the files do not say)
    ex_per_seed: tuple[float, ...]  # EX of each file (one per seed)


def load_arm(
    paths: Sequence[Path], metric: str = "correct", *, name: str = "", missing: MissingPolicy = "wrong"
) -> Arm:
    """Read the seed files of one arm; every seed must cover exactly the same questions."""
    if not paths:
        raise OutcomeError(f"arm {name or '?'}: no files given")
    per_seed = [load_rows(Path(p), metric, missing=missing) for p in paths]
    first = {r.question_id for r in per_seed[0]}
    for p, rows in zip(paths[1:], per_seed[1:], strict=True):
        ids = {r.question_id for r in rows}
        if ids != first:
            only_first, only_this = sorted(first - ids), sorted(ids - first)
            raise OutcomeError(
                f"arm {name or '?'}: {p} and {paths[0]} cover different questions "
                f"(only in {paths[0]}: {show_ids(only_first)}; only in {p}: {show_ids(only_this)})"
            )
    correct: dict[str, float] = {}
    db_of: dict[str, str] = {}
    for rows in per_seed:
        for r in rows:
            correct[r.question_id] = correct.get(r.question_id, 0.0) + r.correct
            if r.db_id:
                prev = db_of.setdefault(r.question_id, r.db_id)
                if prev != r.db_id:
                    raise OutcomeError(
                        f"arm {name or '?'}: question {r.question_id} has db_id {prev!r} and {r.db_id!r}"
                    )
    n_seeds = len(per_seed)
    return Arm(
        name=name,
        files=tuple(Path(p) for p in paths),
        correct={q: v / n_seeds for q, v in correct.items()},
        db_of=db_of,
        ex_per_seed=tuple(
            sum(r.correct for r in rows) / len(rows) if rows else math.nan for rows in per_seed
        ),
    )
