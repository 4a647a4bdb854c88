"""Reading rollout files for labelling: JSONL, an optional header line, one record per line.

Errors name the file and line, and a question seen twice (in one file or across files) is an
error rather than a silent overwrite: pairs of one question must come from one rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from matsql.fileio import iter_jsonl
from matsql.records import RolloutHeader, RolloutRecord


class RolloutReadError(ValueError):
    pass


def read_rollouts(paths: Sequence[str | Path]) -> tuple[list[RolloutRecord], list[RolloutHeader]]:
    """Records of all files in order, and the headers found (one per file at most)."""
    records: list[RolloutRecord] = []
    headers: list[RolloutHeader] = []
    seen: dict[str, str] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise RolloutReadError(f"rollout file not found: {p}")
        for lineno, obj in iter_jsonl(p, RolloutReadError):
            where = f"{p}:{lineno}"
            try:
                if obj.get("kind") == "header":
                    headers.append(RolloutHeader.model_validate(obj))
                    continue
                rec = RolloutRecord.model_validate(obj)
            except ValidationError as e:
                first = e.errors()[0]
                loc = ".".join(str(x) for x in first["loc"])
                raise RolloutReadError(f"{where}: not a rollout record ({loc}: {first['msg']})") from None
            if rec.question_id in seen:
                raise RolloutReadError(
                    f"{where}: question {rec.question_id} already read at {seen[rec.question_id]}"
                )
            seen[rec.question_id] = where
            records.append(rec)
    return records, headers


def benchmark_of(headers: Sequence[RolloutHeader], records: Sequence[RolloutRecord]) -> str | None:
    """The benchmark named by the headers' config (else by the questions); None if unknown.
    Raises if the files disagree: one schema lookup must serve every record."""
    names = {str(h.config["benchmark"]) for h in headers if h.config.get("benchmark")}
    if not names:
        names = {r.question.benchmark for r in records if r.question.benchmark}
    if len(names) > 1:
        raise RolloutReadError(
            f"rollout files name several benchmarks: {', '.join(sorted(names))}; pass --benchmark"
        )
    return next(iter(names), None)
