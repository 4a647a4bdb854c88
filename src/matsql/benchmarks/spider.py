"""Spider 1.0 loaders (official layout under ``<root>/spider``).

- ``spider-dev``: ``spider/dev.json`` questions, gold SQL from ``spider/dev_gold.sql`` (the file the
  official evaluation reads), difficulty = official Spider hardness of the parsed ``sql`` field.
- ``spider-train``: the 7000 train questions from ``spider-syn/train_spider.json`` (field
  ``SpiderQuestion``, gold ``query``); that file has no parsed SQL, so difficulty is the same rule
  on a sqlglot parse (``hardness.APPROX_SOURCE``; it matches the official labels on all of dev).

Question ids are positional (``spider-dev-{i}``, ``spider-train-{i}``) because Spider has none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlglot

from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.hardness import APPROX_SOURCE, OFFICIAL_SOURCE, approx_hardness, official_hardness
from matsql.benchmarks.paths import cache_root, read_json_list, require
from matsql.fileio import write_text_atomic
from matsql.records import Question

APPROX_CACHE_VERSION = 1  # bump when approx_hardness's rule changes


def approx_hardness_remembered(queries: list[str]) -> list[str]:
    """``approx_hardness`` of each query, remembered in the cache folder. Parsing spider-train's
    7,000 gold queries with sqlglot made loading the benchmark take 2.3 s on the 2-core development
    machine (0.12 s remembered), in every process that loads it (each rollout shard, sft-data,
    labels), for labels that depend only on the text, the rule and sqlglot's version, which name
    the file."""
    path = cache_root() / f"hardness-approx-v{APPROX_CACHE_VERSION}-sqlglot-{sqlglot.__version__}.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not all(isinstance(v, str) for v in known.values()):
        known = {}  # not ours, or damaged: rebuilt below
    missing = [q for q in dict.fromkeys(queries) if q not in known]
    for q in missing:
        known[q] = approx_hardness(q)
    if missing:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(known, sort_keys=True))
        except OSError:
            pass  # a read-only cache folder: computed again next time, same labels
    return [known[q] for q in queries]


def _field(row: dict[str, Any], key: str, path: Path, i: int) -> Any:
    if key not in row:
        raise ValueError(f"{path}: entry {i} has no field {key!r} (fields: {sorted(row)})")
    return row[key]


def read_gold_sql(path: Path) -> list[tuple[str, str]]:
    """``SQL<TAB>db_id`` lines (Spider's gold file format); blank lines are skipped."""
    require(path, "Spider gold SQL file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        sql, sep, db_id = line.rpartition("\t")
        if not sep:
            raise ValueError(f"{path}:{n}: expected 'SQL<TAB>db_id', got {line[:80]!r}")
        out.append((sql.strip(), db_id.strip()))
    return out


def load_spider_dev(root: Path) -> Benchmark:
    base = root / "spider"
    rows = read_json_list(base / "dev.json", "Spider dev questions (spider/dev.json)")
    gold = read_gold_sql(base / "dev_gold.sql")
    if len(gold) != len(rows):
        raise ValueError(
            f"{base / 'dev_gold.sql'}: {len(gold)} gold queries for {len(rows)} questions in dev.json"
        )
    questions = []
    for i, (row, (sql, gold_db)) in enumerate(zip(rows, gold, strict=True)):
        db_id = _field(row, "db_id", base / "dev.json", i)
        if db_id != gold_db:
            raise ValueError(
                f"{base / 'dev_gold.sql'}: query {i} is for {gold_db!r} but dev.json says {db_id!r}"
            )
        parsed = row.get("sql")
        questions.append(
            Question(
                question_id=f"spider-dev-{i}",
                db_id=db_id,
                question=_field(row, "question", base / "dev.json", i),
                gold_sql=sql,
                difficulty=official_hardness(parsed) if isinstance(parsed, dict) else approx_hardness(sql),
                benchmark="spider-dev",
            )
        )
    return Benchmark("spider-dev", questions, base / "database", root=root, difficulty_source=OFFICIAL_SOURCE)


def load_spider_train(root: Path) -> Benchmark:
    path = root / "spider-syn" / "train_spider.json"
    rows = read_json_list(path, "Spider train questions (spider-syn/train_spider.json)")
    sqls = [_field(row, "query", path, i).strip() for i, row in enumerate(rows)]
    questions = [
        Question(
            question_id=f"spider-train-{i}",
            db_id=_field(row, "db_id", path, i),
            question=_field(row, "SpiderQuestion", path, i),
            gold_sql=sql,
            difficulty=difficulty,
            benchmark="spider-train",
        )
        for i, (row, sql, difficulty) in enumerate(
            zip(rows, sqls, approx_hardness_remembered(sqls), strict=True)
        )
    ]
    return Benchmark(
        "spider-train", questions, root / "spider" / "database", root=root, difficulty_source=APPROX_SOURCE
    )
