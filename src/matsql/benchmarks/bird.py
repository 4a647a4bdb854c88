"""BIRD loaders: the full dev set and the mini-dev set (both SQLite flavour).

Both read BIRD's question format (``question_id, db_id, question, evidence, SQL, difficulty``)
and databases laid out as ``dev_databases/<db>/<db>.sqlite`` with
``database_description/*.csv`` beside them.

- ``bird-dev``: ``<root>/bird/dev/dev.json`` and ``dev_databases/``.
- ``bird-minidev``: ``<root>/bird/MINIDEV/mini_dev_sqlite.json`` with databases from
  ``<root>/bird/dev/dev_databases/`` (mini-dev ships no databases of its own).

Ids are ``<benchmark>-<question_id>``. Mini-dev (June 2024) lists ids 137 and 138 twice (exact
copies); every row is kept, so counts match the file, and a repeated id gets a ``#k`` suffix
in file order (``bird-minidev-137``, then ``bird-minidev-137#2``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.paths import read_json_list
from matsql.records import Question

BIRD_SOURCE = "bird (official `difficulty` field)"


def unique_ids(raw_ids: list[str]) -> list[str]:
    """Make ids unique deterministically: the k-th repeat (k >= 2) of an id becomes ``id#k``."""
    seen: Counter[str] = Counter()
    out = []
    for rid in raw_ids:
        seen[rid] += 1
        out.append(rid if seen[rid] == 1 else f"{rid}#{seen[rid]}")
    return out


def bird_questions(rows: list[dict[str, Any]], path: Path, benchmark: str) -> list[Question]:
    """BIRD-format rows -> Questions (errors name the file and the entry)."""
    need = ("question_id", "db_id", "question", "SQL")
    raw_ids = []
    for i, row in enumerate(rows):
        absent = [k for k in need if k not in row]
        if absent:
            raise ValueError(f"{path}: entry {i} lacks field(s) {absent} (fields: {sorted(row)})")
        raw_ids.append(f"{benchmark}-{row['question_id']}")
    return [
        Question(
            question_id=qid,
            db_id=row["db_id"],
            question=row["question"],
            evidence=row.get("evidence") or "",
            gold_sql=row["SQL"].strip(),
            difficulty=row.get("difficulty") or "unknown",
            benchmark=benchmark,
        )
        for qid, row in zip(unique_ids(raw_ids), rows, strict=True)
    ]


def load_bird_layout(name: str, questions_file: Path, db_dir: Path, root: Path | None) -> Benchmark:
    """Any BIRD-format question file plus a ``<db_dir>/<db>/<db>.sqlite`` folder."""
    rows = read_json_list(questions_file, f"{name} questions")
    return Benchmark(
        name, bird_questions(rows, questions_file, name), db_dir, root=root, difficulty_source=BIRD_SOURCE
    )


def load_bird_dev(root: Path) -> Benchmark:
    base = root / "bird" / "dev"
    return load_bird_layout("bird-dev", base / "dev.json", base / "dev_databases", root)


def load_bird_minidev(root: Path) -> Benchmark:
    return load_bird_layout(
        "bird-minidev",
        root / "bird" / "MINIDEV" / "mini_dev_sqlite.json",
        root / "bird" / "dev" / "dev_databases",
        root,
    )
