"""The built-in minibench: small BIRD-layout benchmark generated from a seed, no download.

Five SQLite databases (school, store, library, clinic, flights) with keys, NULLs, dates and a
few hundred rows each, and templated questions (filters, counts, GROUP BY, ORDER BY/LIMIT, joins,
subqueries, date ranges) with BIRD-style evidence, a difficulty and gold SQL that runs and gives
an informative answer. Schemas, word lists and question templates are data files in ``data/``.

Layout written (BIRD's)::

    OUT/dev.json  OUT/train.json  OUT/dev_tables.json  OUT/MANIFEST.json
    OUT/dev_databases/<db>/<db>.sqlite
    OUT/dev_databases/<db>/database_description/<table>.csv

Train and dev share the databases and the question families but not instances: every
instance (distinct gold SQL) goes to exactly one split (a third of each family, rounded, to dev). The same seed
gives the same bytes in every file (rows are written in a fixed order; nothing depends on time;
SQLite files are byte-identical under the same SQLite library version). ``MANIFEST.json`` records
the seed, a fingerprint of the generator and its data, and the sha256 of every file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import sqlite3
from collections import Counter
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.bird import bird_questions
from matsql.benchmarks.minibench_questions import Family, Instance, instantiate, parse_family
from matsql.benchmarks.minibench_tables import Row, TableSpec, generate_rows, parse_table
from matsql.benchmarks.paths import cache_root, read_json_list, require
from matsql.fileio import atomic_dir, sha256_file

GENERATOR_VERSION = 1
DATA_FILES = ("minibench_words.yaml", "minibench_schemas.yaml", "minibench_questions.yaml")
DEV_SHARE = 1 / 3  # of each family's instances (rounded), drawn after a seeded shuffle
SOURCE = "minibench (difficulty of the question family)"
_TYPES = {"INTEGER": "integer", "TEXT": "text", "REAL": "real", "DATE": "date"}


@cache
def _data_text(name: str) -> str:
    return resources.files("matsql.benchmarks").joinpath(f"data/{name}").read_text(encoding="utf-8")


def fingerprint() -> str:
    """Digest of everything that determines the output besides the seed."""
    h = hashlib.sha256(f"minibench-v{GENERATOR_VERSION}|sqlite {sqlite3.sqlite_version}".encode())
    for name in DATA_FILES:
        h.update(_data_text(name).encode())
    return h.hexdigest()[:16]


def load_specs() -> tuple[dict[str, list[Any]], dict[str, list[TableSpec]], list[Family]]:
    words = yaml.safe_load(_data_text("minibench_words.yaml"))
    schemas = {
        db: [parse_table(t, f"minibench_schemas.yaml:{db}[{i}]") for i, t in enumerate(tables)]
        for db, tables in yaml.safe_load(_data_text("minibench_schemas.yaml")).items()
    }
    raw = yaml.safe_load(_data_text("minibench_questions.yaml"))["families"]
    families = [parse_family(f, f"minibench_questions.yaml:families[{i}]") for i, f in enumerate(raw)]
    ids = Counter(f.id for f in families)
    if dupes := [k for k, v in ids.items() if v > 1]:
        raise ValueError(f"minibench_questions.yaml: duplicate family ids {dupes}")
    if unknown := sorted({f.db for f in families} - set(schemas)):
        raise ValueError(f"minibench_questions.yaml: families use unknown databases {unknown}")
    return words, schemas, families


# ---------------------------------------------------------------- writing one database


def create_sql(table: TableSpec) -> str:
    lines = [f"  {c.name} {c.type}" for c in table.columns]
    if table.primary_key:
        lines.append(f"  PRIMARY KEY ({', '.join(table.primary_key)})")
    for c in table.columns:
        if c.references:
            ref_t, _, ref_c = c.references.partition(".")
            lines.append(f"  FOREIGN KEY ({c.name}) REFERENCES {ref_t} ({ref_c})")
    return f"CREATE TABLE {table.name} (\n" + ",\n".join(lines) + "\n)"


def write_sqlite(path: Path, tables: list[TableSpec], rows: dict[str, list[Row]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for t in tables:
            conn.execute(create_sql(t))
            cols = [c.name for c in t.columns]
            conn.executemany(
                f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [tuple(r[c] for c in cols) for r in rows[t.name]],
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def description_csv(table: TableSpec) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["original_column_name", "column_name", "column_description", "data_format", "value_description"]
    )
    for c in table.columns:
        natural = c.name.replace("_", " ")
        w.writerow(
            [c.name, natural if natural != c.name else "", c.description, _TYPES[c.type], c.value_description]
        )
    return buf.getvalue()


def tables_entry(db_id: str, tables: list[TableSpec]) -> dict[str, Any]:
    """BIRD/Spider ``tables.json`` entry."""
    cols_orig: list[list[Any]] = [[-1, "*"]]
    cols_nat: list[list[Any]] = [[-1, "*"]]
    types = ["text"]
    index: dict[tuple[str, str], int] = {}
    pks: list[Any] = []
    for ti, t in enumerate(tables):
        for c in t.columns:
            index[(t.name, c.name)] = len(cols_orig)
            cols_orig.append([ti, c.name])
            cols_nat.append([ti, c.name.replace("_", " ")])
            types.append(_TYPES[c.type])
        pk = [index[(t.name, c)] for c in t.primary_key]
        if pk:
            pks.append(pk[0] if len(pk) == 1 else pk)
    fks = [
        [index[(t.name, c.name)], index[tuple(c.references.split(".", 1))]]  # type: ignore[index]
        for t in tables
        for c in t.columns
        if c.references
    ]
    return {
        "db_id": db_id,
        "table_names_original": [t.name for t in tables],
        "table_names": [t.name.replace("_", " ") for t in tables],
        "column_names_original": cols_orig,
        "column_names": cols_nat,
        "column_types": types,
        "primary_keys": pks,
        "foreign_keys": fks,
    }


# ---------------------------------------------------------------- questions and split


def split_instances(instances: list[Instance], rng: random.Random) -> tuple[list[Instance], list[Instance]]:
    """Disjoint train/dev instances of one family: round(n / 3) to dev, the rest to train."""
    order = rng.sample(instances, len(instances))
    n_dev = round(len(order) * DEV_SHARE)
    return order[n_dev:], order[:n_dev]


def question_rows(instances: list[Instance]) -> list[dict[str, Any]]:
    return [
        {
            "question_id": i,
            "db_id": x.db_id,
            "question": x.question,
            "evidence": x.evidence,
            "SQL": x.sql,
            "difficulty": x.difficulty,
            "family": x.family,
        }
        for i, x in enumerate(instances)
    ]


def _dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write(out: Path, seed: int) -> dict[str, Any]:
    words, schemas, families = load_specs()
    db_dir = out / "dev_databases"
    entries = []
    for db_id, tables in schemas.items():
        rows: dict[str, list[Row]] = {}
        for t in tables:
            rows[t.name] = generate_rows(t, words, rows, random.Random(f"minibench:{seed}:{db_id}:{t.name}"))
        (db_dir / db_id / "database_description").mkdir(parents=True)
        write_sqlite(db_dir / db_id / f"{db_id}.sqlite", tables, rows)
        for t in tables:
            (db_dir / db_id / "database_description" / f"{t.name}.csv").write_text(
                description_csv(t), encoding="utf-8"
            )
        entries.append(tables_entry(db_id, tables))
    train: list[Instance] = []
    dev: list[Instance] = []
    conns = {
        db: sqlite3.connect(f"{(db_dir / db / f'{db}.sqlite').resolve().as_uri()}?mode=ro", uri=True)
        for db in schemas
    }
    try:
        for fam in families:
            rng = random.Random(f"minibench:{seed}:family:{fam.id}")
            tr, dv = split_instances(instantiate(fam, conns[fam.db], rng), rng)
            train += tr
            dev += dv
    finally:
        for c in conns.values():
            c.close()
    _dump_json(out / "dev.json", question_rows(dev))
    _dump_json(out / "train.json", question_rows(train))
    _dump_json(out / "dev_tables.json", entries)
    files = {p.relative_to(out).as_posix(): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "name": "matsql-minibench",
        "seed": seed,
        "fingerprint": fingerprint(),
        "sqlite_version": sqlite3.sqlite_version,
        "counts": {"train": len(train), "dev": len(dev), "databases": len(schemas)},
        "files": files,
    }
    _dump_json(out / "MANIFEST.json", manifest)
    return manifest


def build_minibench(out: Path, seed: int = 0, *, overwrite: bool = False) -> dict[str, Any]:
    """Generate the minibench into ``out`` atomically (build in a temp folder, then rename)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--force) to rebuild it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        manifest = _write(tmp, seed)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "MANIFEST.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_dir(seed: int = 0) -> Path:
    return cache_root() / f"minibench-seed{seed}"


def ensure_minibench(seed: int = 0) -> Path:
    """The cached build for ``seed``; (re)built when absent or made by other generator data."""
    folder = default_dir(seed)
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("fingerprint") == fingerprint() and manifest.get("seed") == seed:
        return folder
    try:
        build_minibench(folder, seed, overwrite=True)
    except OSError:
        # Another process may have renamed its finished build into place first.
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("fingerprint") != fingerprint():
            raise
    return folder


def load_minibench(root: Path, split: str = "dev") -> Benchmark:
    """A built minibench folder as a Benchmark (``minibench`` = dev, ``minibench-train``)."""
    if split not in ("dev", "train"):
        raise ValueError(f"minibench split must be 'dev' or 'train', got {split!r}")
    name = "minibench" if split == "dev" else "minibench-train"
    path = require(
        root / f"{split}.json",
        f"minibench {split} questions",
        hint="Build the minibench with `matsql data minibench OUT` and pass OUT as root / --data.",
    )
    rows = read_json_list(path, f"minibench {split} questions")
    return Benchmark(
        name, bird_questions(rows, path, name), root / "dev_databases", root=root, difficulty_source=SOURCE
    )
