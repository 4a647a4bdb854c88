"""Read predicted SQL files and join them with a benchmark's questions.

Two formats:

- BIRD official JSON: ``{"0": "SQL\\t----- bird -----\\tdb_id", ...}``; a key is the position of
  the question in the benchmark's file order (what BIRD's ``evaluation.py`` assumes). A value
  without the separator is taken as bare SQL.
- JSONL (any file named ``*.jsonl``, or not a single BIRD object): one
  ``{"question_id": ..., "sql": ...}`` object per line (``sql`` may be null: no SQL); ``question_id`` is the
  benchmark's id (``bird-minidev-1471``) or the raw id the benchmark file uses (``1471``).

A ``.gz`` file is read gunzipped (``matsql select`` writes ``picks.jsonl.gz``; its rows carry
``question_id`` and ``sql`` too, so a selector's picks can be re-scored).

A problem with the whole file raises :class:`PredictionError` naming the file and the key. A bad
JSONL line (malformed JSON, bytes that are not UTF-8, missing fields, an unknown or repeated
question id) is reported by its number: :func:`read_prediction_file` keeps the good lines and
lists the bad ones (their questions count as unanswered); :func:`read_predictions` refuses the
file, naming every bad line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.records import Question

BIRD_SEPARATOR = "\t----- bird -----\t"


class PredictionError(ValueError):
    """A predictions file that cannot be read or does not fit the benchmark."""


@dataclass
class Predictions:
    """The predictions read from a file, and the lines that could not be used."""

    sql: dict[str, str | list[str]]  # question_id -> predicted SQL (a list: right if any text is)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, "path:line: why")

    def refuse_bad_lines(self, path: Path, limit: int = 20) -> None:
        if not self.bad_lines:
            return
        numbers = ", ".join(str(n) for n, _ in self.bad_lines)
        shown = "\n".join(why for _, why in self.bad_lines[:limit])
        more = f"\n... and {len(self.bad_lines) - limit} more" if len(self.bad_lines) > limit else ""
        raise PredictionError(f"{path}: {len(self.bad_lines)} bad line(s): {numbers}\n{shown}{more}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:
        raise PredictionError(f"{path}: cannot read predictions ({getattr(e, 'strerror', None) or e})") from e


def _decode_lines(path: Path, data: bytes) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, text) of each line, and the lines that are not UTF-8, named by number."""
    good, bad = [], []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            good.append((n, raw.decode("utf-8")))
        except UnicodeDecodeError as e:
            bad.append((n, f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
    return good, bad


def sniff_benchmark(path: Path, names: Sequence[str]) -> str | None:
    """The benchmark a JSONL predictions file names through its question ids (``spider-dev-12``
    -> ``spider-dev``), or None when the ids do not say (BIRD JSON, raw ids)."""
    try:
        lines, _ = _decode_lines(path, _read_bytes(path))
    except PredictionError:
        return None
    ids = []
    for _, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("question_id"), str):
            ids.append(row["question_id"])
    if not ids:
        return None
    fits = [b for b in names if all(i.startswith(f"{b}-") and i[len(b) + 1 :].isdigit() for i in ids)]
    return max(fits, key=len) if fits else None


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
    """question_id -> predicted SQL, checked against ``questions`` (the benchmark's file order);
    any bad line refuses the file, naming every bad line."""
    got = read_prediction_file(path, questions, benchmark)
    got.refuse_bad_lines(path)
    return got.sql


def read_prediction_file(path: Path, questions: Sequence[Question], benchmark: str = "") -> Predictions:
    """The usable predictions of a file and its bad lines (by number)."""
    path = Path(path)
    data = _read_bytes(path)
    lines, bad = _decode_lines(path, data)
    if not bad:
        text = "\n".join(line for _, line in lines)
        if _is_bird_json(path, text):
            return Predictions(_read_bird_json(path, json.loads(text), questions))
    return _read_jsonl(path, lines, bad, questions, benchmark)


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


def _read_jsonl(
    path: Path,
    lines: list[tuple[int, str]],
    bad: list[tuple[int, str]],
    questions: Sequence[Question],
    benchmark: str,
) -> Predictions:
    ids = {q.question_id for q in questions}
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    bad = list(bad)
    for n, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((n, f"{where}: malformed JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(row, dict) or "question_id" not in row or "sql" not in row:
            bad.append((n, f"{where}: expected an object with 'question_id' and 'sql', got {line[:80]!r}"))
            continue
        raw, sql = str(row["question_id"]), row["sql"]
        qid = raw if raw in ids else f"{benchmark}-{raw}"
        if qid not in ids:
            bad.append((n, f"{where}: question_id {raw!r} is not in benchmark {benchmark or '?'}"))
            continue
        if sql is not None and not isinstance(sql, str):
            bad.append((n, f"{where}: 'sql' must be a string or null, got {type(sql).__name__}"))
            continue
        if qid in seen:
            bad.append((n, f"{where}: a second prediction for question {qid} (first on line {seen[qid]})"))
            continue
        seen[qid] = n
        if sql is not None:  # null = no SQL produced: scored like a missing prediction
            out[qid] = sql
    return Predictions(out, sorted(bad))


ROLLOUT_SQL = ("planner@1", "pipeline@1", "majority", "pass@k")


def rollout_predictions(path: Path, metric: str) -> tuple[dict[str, list[str]], str | None]:
    """The SQL a rollout file scored for ``metric``, per question, and the benchmark its
    questions name: ``planner@1`` the greedy candidate's planner SQL; ``pipeline@1`` its final
    SQL (after validators and fixer); ``majority`` the final SQL of the candidate the vote by
    execution result picked (the vote as the run cast it); ``pass@k`` every candidate's final SQL
    (right if any is). A record without a greedy candidate is an error for the @1 metrics."""
    from matsql.evaluate.metrics import greedy_candidate, majority_pick
    from matsql.rollout.io import read_records

    if metric not in ROLLOUT_SQL:
        raise PredictionError(f"rollout metric must be one of {', '.join(ROLLOUT_SQL)}, got {metric!r}")
    try:
        records = read_records(path)
    except (OSError, ValueError) as e:
        raise PredictionError(str(e)) from None
    out: dict[str, list[str]] = {}
    benches = {r.question.benchmark for r in records if r.question.benchmark}
    for r in records:
        if r.gold_exec.status == "missing_db":
            continue  # scored wrong by the missing-database policy
        if metric == "pass@k":
            sqls = [c.final_sql for c in sorted(r.candidates, key=lambda c: c.index)]
        elif metric == "majority":
            pick = majority_pick(r.candidates)
            sqls = [pick.final_sql] if pick is not None else []
        else:
            g = greedy_candidate(r.candidates)
            if g is None:
                raise PredictionError(
                    f"{path}: question {r.question_id} has no greedy candidate ({metric} is undefined)"
                )
            sqls = [g.planner.sql if metric == "planner@1" else g.final_sql]
        sqls = [x for x in sqls if x is not None]
        if sqls:
            out[r.question_id] = sqls
    return out, (benches.pop() if len(benches) == 1 else None)
