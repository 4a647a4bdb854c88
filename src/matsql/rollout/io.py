"""Rollout files: a header line then one record per question, append-only.

Each record is written as one ``write`` of a complete line followed by flush+fsync, so a kill
loses at most the question in flight. On restart, a torn last line (no trailing newline) is
cut off, finished question ids are skipped, and the header must match the run's config hash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matsql import __version__
from matsql.fileio import iter_jsonl
from matsql.records import RolloutHeader, RolloutRecord, dumps


class RolloutFileError(ValueError):
    pass


def _repair_tail(path: Path) -> None:
    """Drop a torn final line left by a kill mid-write."""
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # find last newline
        pos = size - 1
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            i = buf.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            pos = start
        f.truncate(0)


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rollout files may be gzipped (``.jsonl.gz``) for archiving in results/."""
    yield from iter_jsonl(path, RolloutFileError)


def read_header(path: Path) -> RolloutHeader | None:
    for _, obj in iter_lines(path):
        if obj.get("kind") == "header":
            return RolloutHeader.model_validate(obj)
        return None
    return None


def read_records(path: str | Path) -> list[RolloutRecord]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rollout file not found: {path}")
    out: list[RolloutRecord] = []
    seen: set[str] = set()
    for lineno, obj in iter_lines(path):
        if obj.get("kind") == "header":
            continue
        try:
            rec = RolloutRecord.model_validate(obj)
        except Exception as e:
            raise RolloutFileError(f"{path}:{lineno}: not a rollout record: {e}") from e
        if rec.question_id in seen:
            raise RolloutFileError(f"{path}:{lineno}: duplicate record for question {rec.question_id}")
        seen.add(rec.question_id)
        out.append(rec)
    return out


class RolloutWriter:
    """Append-only writer with resume. Use as a context manager."""

    def __init__(self, path: str | Path, config: dict[str, Any], config_hash: str, resume: bool = True):
        self.path = Path(path)
        self.config_hash = config_hash
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise RolloutFileError(
                    f"{self.path} exists; pass --resume to continue it or choose another --out"
                )
            _repair_tail(self.path)
            header = read_header(self.path)
            if header is not None and header.config_hash != config_hash:
                raise RolloutFileError(
                    f"{self.path} was written with config {header.config_hash}, this run is {config_hash}; "
                    "use another --out or the same settings"
                )
            self.done = {r.question_id for r in read_records(self.path)}
            self._f = self.path.open("a", encoding="utf-8")
        else:
            self._f = self.path.open("w", encoding="utf-8")
            header = RolloutHeader(
                matsql_version=__version__,
                config_hash=config_hash,
                config=config,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._write_line(dumps(header))

    def _write_line(self, line: str) -> None:
        self._f.write(line + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, record: RolloutRecord) -> None:
        if record.question_id in self.done:
            return
        self._write_line(dumps(record))
        self.done.add(record.question_id)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RolloutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_rollouts(shards: list[Path], out: Path, order: list[str] | None = None) -> int:
    """Merge shard files of one run (same config hash) into ``out``; returns the record count.

    Records are written in ``order`` (question ids) when given, else shard by shard. A
    question in two shards, or shards of different configs, is an error.
    """
    headers = [read_header(p) for p in shards]
    hashes = {h.config_hash for h in headers if h is not None}
    if len(hashes) > 1:
        raise RolloutFileError(f"shards come from different configs: {sorted(hashes)}")
    lines: dict[str, str] = {}
    where: dict[str, str] = {}
    position: dict[str, tuple[int, int]] = {}
    for si, (p, h) in enumerate(zip(shards, headers, strict=True)):
        _repair_tail(p)
        shard = (h.config.get("shard") if h is not None else None) or (si, len(shards))
        local = 0
        for lineno, obj in iter_lines(p):
            if obj.get("kind") == "header":
                continue
            qid = obj["question"]["question_id"]
            # shard I of N holds positions I, I+N, ...: interleave back to benchmark order
            position[qid] = (local * int(shard[1]) + int(shard[0]), si)
            local += 1
            if qid in lines:
                raise RolloutFileError(f"{p}:{lineno}: question {qid} is also in {where[qid]}")
            lines[qid] = json.dumps(obj, ensure_ascii=False)
            where[qid] = f"{p}:{lineno}"
    if order is not None:
        rank = {q: i for i, q in enumerate(order)}
        ids = sorted(lines, key=lambda q: (rank.get(q, len(rank)), position[q]))
    else:
        ids = sorted(lines, key=lambda q: position[q])
    header = headers[0]
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        if header is not None:
            cfg = dict(header.config)
            cfg.pop("shard", None)
            f.write(dumps(header.model_copy(update={"config": cfg})) + "\n")
        for q in ids:
            f.write(lines[q] + "\n")
    os.replace(tmp, out)
    return len(ids)
