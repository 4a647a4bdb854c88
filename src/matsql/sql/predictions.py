"""Read predicted SQL files and join them with a benchmark's questions.

Two formats:

- BIRD official JSON: ``{"0": "SQL\\t----- bird -----\\tdb_id", ...}``; a key is the position of
  the question in the benchmark's file order (what BIRD's ``evaluation.py`` assumes). A value
  without the separator is taken as bare SQL.
- JSONL (any file named ``*.jsonl``, or not a single BIRD object): one
  ``{"question_id": ..., "sql": ...}`` object per line (``sql`` may be null: no SQL); ``question_id`` is the
  benchmark's id (``bird-minidev-1471``) or the raw id the benchmark file uses (``1471``).

Every problem raises :class:`PredictionError` naming the file and the line or key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matsql.records import Question

BIRD_SEPARATOR = "\t----- bird -----\t"


class PredictionError(ValueError):
    """A predictions file that cannot be read or does not fit the benchmark."""


def _is_bird_json(path: Path, text: str) -> bool:
    """BIRD JSON: not named ``*.jsonl``, and the whole file is one object that is not a JSONL row."""
    if path.suffix == ".jsonl" or not text.lstrip().startswith("{"):
        return False
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and "question_id" not in data


def read_predictions(path: Path, questions: Sequence[Question], benchmark: str = "") -> dict[str, str]:
    """question_id -> predicted SQL, checked against ``questions`` (the benchmark's file order)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PredictionError(f"{path}: cannot read predictions ({e.strerror or e})") from e
    if _is_bird_json(path, text):
        return _read_bird_json(path, json.loads(text), questions)
    return _read_jsonl(path, text, questions, benchmark)


def _read_bird_json(path: Path, data: dict[str, Any], questions: Sequence[Question]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        where = f"{path}: key {key!r}"
        try:
            index = int(key)
        except ValueError:
            raise PredictionError(
                f"{where}: BIRD prediction keys are question positions (0, 1, ...)"
            ) from None
        if not 0 <= index < len(questions):
            raise PredictionError(
                f"{where}: position out of range (the benchmark has {len(questions)} questions)"
            )
        if not isinstance(value, str):
            raise PredictionError(
                f"{where}: expected a string 'SQL\\t----- bird -----\\tdb_id', got {value!r:.80}"
            )
        q = questions[index]
        sql, sep, db_id = value.rpartition(BIRD_SEPARATOR)
        if not sep:
            sql, db_id = value, ""
        if db_id and db_id.strip() != q.db_id:
            raise PredictionError(
                f"{where}: prediction is for database {db_id.strip()!r} but question {q.question_id} "
                f"uses {q.db_id!r} (are the keys in the benchmark's question order?)"
            )
        if q.question_id in out:
            raise PredictionError(f"{where}: a second prediction for question {q.question_id}")
        out[q.question_id] = sql
    return out


def _read_jsonl(path: Path, text: str, questions: Sequence[Question], benchmark: str) -> dict[str, str]:
    ids = {q.question_id for q in questions}
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PredictionError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict) or "question_id" not in row or "sql" not in row:
            raise PredictionError(
                f"{where}: expected an object with 'question_id' and 'sql', got {line[:80]!r}"
            )
        raw, sql = str(row["question_id"]), row["sql"]
        qid = raw if raw in ids else f"{benchmark}-{raw}"
        if qid not in ids:
            raise PredictionError(f"{where}: question_id {raw!r} is not in benchmark {benchmark or '?'}")
        if sql is not None and not isinstance(sql, str):
            raise PredictionError(f"{where}: 'sql' must be a string or null, got {type(sql).__name__}")
        if qid in out:
            raise PredictionError(f"{where}: a second prediction for question {qid}")
        if sql is not None:  # null = no SQL produced: scored like a missing prediction
            out[qid] = sql
    return out
