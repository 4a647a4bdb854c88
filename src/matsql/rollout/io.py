"""Rollout files: a header line then one record per question, append-only.

Each record is written as one ``write`` of a complete line followed by flush+fsync, so a kill
loses at most the question in flight. On restart, a torn last line (no trailing newline) is
cut off, finished question ids are skipped, and the header is checked on every resume: a file
whose header is torn or missing but which holds records is refused (its settings cannot be
checked), a file left empty by the repair starts over with a fresh header, and a header of
other settings is refused naming the settings that differ.

A path ending in ``.gz`` is written as gzip: each line is its own gzip member (a multi-member
file, which every gzip reader reads as one stream), so appending and the torn-tail repair work
the same way as for plain text.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matsql import __version__
from matsql.benchmarks.schema import DEFAULT_STYLE
from matsql.fileio import atomic_write, atomic_write_gzip, is_gzip_path, iter_jsonl
from matsql.records import RolloutHeader, RolloutRecord, dumps


class RolloutFileError(ValueError):
    pass


def _repair_tail(path: Path) -> None:
    """Drop a torn final line left by a kill mid-write."""
    if is_gzip_path(path):
        _repair_gzip_tail(path)
        return
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


def _repair_gzip_tail(path: Path) -> None:
    """Cut a multi-member gzip file after its last complete member that ends a line."""
    data = path.read_bytes()
    pos, keep = 0, 0
    while pos < len(data):
        d = zlib.decompressobj(wbits=31)
        try:
            text = d.decompress(data[pos:])
        except zlib.error:
            break
        if not d.eof:
            break  # a member cut short by a kill
        end = len(data) - len(d.unused_data)
        if text.endswith(b"\n"):
            keep = end
        pos = end
    if keep != len(data):
        with path.open("rb+") as f:
            f.truncate(keep)


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rollout files may be gzipped (``.jsonl.gz``) for archiving in results/."""
    yield from iter_jsonl(path, RolloutFileError)


def read_header(path: Path) -> RolloutHeader | None:
    for lineno, obj in iter_lines(path):
        if obj.get("kind") == "header":
            try:
                return RolloutHeader.model_validate(obj)
            except ValueError as e:
                raise RolloutFileError(f"{path}:{lineno}: not a rollout header: {_first_error(e)}") from None
        return None
    return None


def schema_style_of(headers: Sequence[RolloutHeader | None]) -> str:
    """The schema style the rollouts' prompts were built with (their headers' config; a header
    from before the key existed, or no header, means the default). Files of different styles are
    an error: one schema lookup serves every record."""
    found = {str((h.config if h is not None else {}).get("schema_style") or DEFAULT_STYLE) for h in headers}
    if len(found) > 1:
        raise RolloutFileError(
            f"rollout files were made with several schema styles: {', '.join(sorted(found))}"
        )
    return found.pop() if found else DEFAULT_STYLE


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
    return str(e).splitlines()[0]


def read_rollouts(paths: Sequence[str | Path]) -> tuple[list[RolloutRecord], list[RolloutHeader]]:
    """The records of all files, in order, and the headers found (one per file at most). Every
    command reads rollout records here. A line that is not a record or a header names its file
    and line, and a question seen twice, in one file or across files, is an error naming both
    places: the records of one question must come from one rollout."""
    records: list[RolloutRecord] = []
    headers: list[RolloutHeader] = []
    seen: dict[str, str] = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise RolloutFileError(f"rollout file not found: {p}")
        for lineno, obj in iter_lines(p):
            where = f"{p}:{lineno}"
            try:
                if obj.get("kind") == "header":
                    headers.append(RolloutHeader.model_validate(obj))
                    continue
                rec = RolloutRecord.model_validate(obj)
            except ValueError as e:
                raise RolloutFileError(f"{where}: not a rollout record ({_first_error(e)})") from None
            if rec.question_id in seen:
                raise RolloutFileError(
                    f"{where}: question {rec.question_id} already read at {seen[rec.question_id]}"
                )
            seen[rec.question_id] = where
            records.append(rec)
    return records, headers


def read_records(path: str | Path) -> list[RolloutRecord]:
    """The records of one rollout file (:func:`read_rollouts`); a missing file is a
    ``FileNotFoundError``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rollout file not found: {path}")
    return read_rollouts([path])[0]


def benchmark_of(headers: Sequence[RolloutHeader], records: Sequence[RolloutRecord]) -> str | None:
    """The benchmark named by the headers' config (else by the questions); None if unknown.
    Raises if the files disagree: one schema lookup must serve every record."""
    names = {str(h.config["benchmark"]) for h in headers if h.config.get("benchmark")}
    if not names:
        names = {r.question.benchmark for r in records if r.question.benchmark}
    if len(names) > 1:
        raise RolloutFileError(
            f"rollout files name several benchmarks: {', '.join(sorted(names))}; pass --benchmark"
        )
    return next(iter(names), None)


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k != "agents")
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:6]]
    if old.get("agents") != new.get("agents"):
        parts.append("agents differ")
    return "; ".join(parts)


class RolloutWriter:
    """Append-only writer with resume. Use as a context manager."""

    def __init__(self, path: str | Path, config: dict[str, Any], config_hash: str, resume: bool = True):
        self.path = Path(path)
        self.config_hash = config_hash
        self.gzip = is_gzip_path(self.path)
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = True
        if self.path.exists() and self.path.stat().st_size > 0:
            if not resume:
                raise RolloutFileError(
                    f"{self.path} exists; pass --resume to continue it or choose another --out"
                )
            _repair_tail(self.path)
            fresh = self.path.stat().st_size == 0  # only a torn first line was there
        if not fresh:
            header = read_header(self.path)
            if header is None:
                raise RolloutFileError(
                    f"{self.path}: the first line is not a rollout header, so the settings that wrote "
                    "this file cannot be checked; use another --out"
                )
            if header.config_hash != config_hash:
                diff = _config_diff(header.config, config)
                raise RolloutFileError(
                    f"{self.path} was written with config {header.config_hash}, this run is {config_hash}"
                    f"{f' ({diff})' if diff else ''}; use another --out or the same settings"
                )
            self.done = {r.question_id for r in read_records(self.path)}
            self._f = self.path.open("ab")
        else:
            self._f = self.path.open("wb")
            header = RolloutHeader(
                matsql_version=__version__,
                config_hash=config_hash,
                config=config,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._write_line(dumps(header))

    def _write_line(self, line: str) -> None:
        # backslashreplace: a lone surrogate can only sit in a JSON string, where "\udxxx" is a
        # valid escape, so the line stays valid UTF-8 JSON whatever text it carries
        data = (line + "\n").encode("utf-8", "backslashreplace")
        if self.gzip:
            data = gzip.compress(data, mtime=0)
        self._f.write(data)
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
    # errors: a lone surrogate can only sit in a JSON string, where "\udxxx" stays valid
    write = atomic_write_gzip if is_gzip_path(out) else atomic_write
    with write(out, errors="backslashreplace") as f:
        if header is not None:
            cfg = dict(header.config)
            cfg.pop("shard", None)
            f.write(dumps(header.model_copy(update={"config": cfg})) + "\n")
        for q in ids:
            f.write(lines[q] + "\n")
    return len(ids)
