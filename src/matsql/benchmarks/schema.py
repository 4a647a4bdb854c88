"""Schema text for prompts: tables, columns, types, keys, sample values, descriptions.

Three steps, so the middle is pure and testable: ``read_schema`` (I/O: the SQLite file, opened
read-only, plus BIRD description CSVs) -> ``DbSchema`` -> ``render`` (pure; the layout comes from
``data/schema_format.yaml``). ``schema_text`` caches the result in memory per database, keyed by
file size and mtime so an edited file is re-read, and optionally on disk (``cache_dir``).

Sample values are the first ``n_values`` distinct non-NULL, non-empty values in table order
(deterministic for a given file), with long text cut to ``max_value_chars``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from matsql.benchmarks.descriptions import ColumnDescription, read_descriptions
from matsql.fileio import write_text_atomic

N_VALUES = 3
MAX_VALUE_CHARS = 40
MAX_COMMENT_CHARS = 200
DEFAULT_STYLE = "mats"
_SPECIAL = re.compile(r"[()\-\s/]")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    primary_key: bool
    comment: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class ForeignKey:
    table: str
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class DbSchema:
    tables: tuple[Table, ...]
    foreign_keys: tuple[ForeignKey, ...]


# ---------------------------------------------------------------- reading (I/O)


def connect_ro(db_path: Path) -> sqlite3.Connection:
    """Read-only connection (``mode=ro``) that tolerates non-UTF-8 text (some Spider DBs)."""
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    return conn


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _sample_values(
    conn: sqlite3.Connection, table: str, column: str, n: int, max_chars: int
) -> tuple[Any, ...]:
    if n <= 0:
        return ()
    c = _q(column)
    rows = conn.execute(
        f"SELECT DISTINCT {c} FROM {_q(table)} WHERE {c} IS NOT NULL AND typeof({c}) != 'blob' "
        f"AND trim(CAST({c} AS TEXT)) != '' LIMIT {int(n)}"
    ).fetchall()
    return tuple(_shorten(" ".join(v.split()), max_chars) if isinstance(v, str) else v for (v,) in rows)


def _comment(col: str, desc: ColumnDescription | None) -> str:
    """Description worth showing: the BIRD description, else the expanded name, unless it only
    repeats the column name."""
    if desc is None:
        return ""
    text = desc.description or desc.name
    return "" if _norm(text) == _norm(col) else _shorten(text, MAX_COMMENT_CHARS)


def read_schema(
    db_path: Path,
    description_dir: Path | None = None,
    *,
    n_values: int = N_VALUES,
    max_value_chars: int = MAX_VALUE_CHARS,
) -> DbSchema:
    """Introspect one SQLite database (read-only) and attach column descriptions."""
    descriptions = read_descriptions(description_dir) if description_dir else {}
    conn = connect_ro(db_path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' ESCAPE '!' "
                "ORDER BY rowid"
            )
        ]
        by_lower = {n.lower(): n for n in names}
        info = {t: conn.execute(f"PRAGMA table_info({_q(t)})").fetchall() for t in names}
        tables = []
        for t in names:
            desc = descriptions.get(t.lower(), {})
            cols = tuple(
                Column(
                    name=r[1],
                    type=(r[2] or "").lower(),
                    primary_key=r[5] > 0,
                    comment=_comment(r[1], desc.get(r[1].strip().lower())),
                    values=_sample_values(conn, t, r[1], n_values, max_value_chars),
                )
                for r in info[t]
            )
            tables.append(Table(t, cols))
        fks = []
        for t in names:
            # SQLite numbers foreign keys last-declared first; -id restores declaration order.
            rows = conn.execute(f"PRAGMA foreign_key_list({_q(t)})").fetchall()
            for r in sorted(rows, key=lambda r: (-r[0], r[1])):
                ref = by_lower.get(r[2].lower(), r[2])
                ref_col = r[4]
                if ref_col is None:  # "REFERENCES parent" without a column: the parent's primary key
                    pks = [c[1] for c in sorted(info.get(ref, []), key=lambda c: c[5]) if c[5] > 0]
                    ref_col = pks[r[1]] if r[1] < len(pks) else "?"
                ref_cols = {c[1].lower(): c[1] for c in info.get(ref, [])}
                fks.append(ForeignKey(t, r[3], ref, ref_cols.get(ref_col.lower(), ref_col)))
        return DbSchema(tuple(tables), tuple(fks))
    finally:
        conn.close()


# ---------------------------------------------------------------- rendering (pure)


@cache
def styles() -> dict[str, dict[str, Any]]:
    """Schema layouts from ``data/schema_format.yaml``."""
    text = (
        resources.files("matsql.benchmarks").joinpath("data/schema_format.yaml").read_text(encoding="utf-8")
    )
    return yaml.safe_load(text)


def _name(name: str, fmt: dict[str, Any]) -> str:
    return f"`{name}`" if fmt.get("quote_special_names") and _SPECIAL.search(name) else name


def render(schema: DbSchema, style: str = DEFAULT_STYLE) -> str:
    """Schema text in one of the layouts of ``schema_format.yaml``."""
    all_styles = styles()
    if style not in all_styles:
        raise ValueError(f"unknown schema style {style!r}; known: {sorted(all_styles)}")
    fmt = all_styles[style]
    lines = [fmt["header"]]
    for table in schema.tables:
        tname = _name(table.name, fmt)
        cols = []
        for col in table.columns:
            fields = {
                "type": col.type,
                "primary_key": col.primary_key,
                "comment": col.comment,
                "values": fmt["value_sep"].join(fmt["value"].format(value=v) for v in col.values),
            }
            details = [
                template.format(**{k: v for k, v in fields.items() if k != "primary_key"})
                for key, template in fmt["details"].items()
                if fields[key]
            ]
            cname = _name(col.name, fmt)
            if details:
                cols.append(
                    fmt["column"].format(table=tname, column=cname, details=fmt["detail_sep"].join(details))
                )
            else:
                cols.append(fmt["column_no_details"].format(table=tname, column=cname))
        lines.append(fmt["table"].format(table=tname, columns=fmt["column_sep"].join(cols)))
    if schema.foreign_keys:
        lines.append(fmt["foreign_keys"])
        lines += [
            fmt["foreign_key"].format(
                table=_name(fk.table, fmt),
                column=_name(fk.column, fmt),
                ref_table=_name(fk.ref_table, fmt),
                ref_column=_name(fk.ref_column, fmt),
            )
            for fk in schema.foreign_keys
        ]
    else:
        lines.append(fmt["no_foreign_keys"])
    return "\n".join(lines)


# ---------------------------------------------------------------- cached entry point


def _signature(db_path: Path, description_dir: Path | None) -> tuple[Any, ...]:
    st = db_path.stat()
    descs: tuple[Any, ...] = ()
    if description_dir is not None and description_dir.is_dir():
        descs = tuple(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(description_dir.glob("*.csv"))
        )
    return (str(db_path.resolve()), st.st_size, st.st_mtime_ns, descs)


@lru_cache(maxsize=512)
def _cached_text(signature: tuple[Any, ...], description_dir: str | None, style: str, n_values: int) -> str:
    schema = read_schema(
        Path(signature[0]), Path(description_dir) if description_dir else None, n_values=n_values
    )
    return render(schema, style)


def schema_text(
    db_path: Path,
    description_dir: Path | None = None,
    *,
    style: str = DEFAULT_STYLE,
    n_values: int = N_VALUES,
    cache_dir: Path | None = None,
) -> str:
    """Prompt schema of one database; cached in memory, and on disk if ``cache_dir`` is given."""
    db_path = Path(db_path)
    sig = _signature(db_path, description_dir)
    ddir = str(description_dir) if description_dir is not None else None
    if cache_dir is None:
        return _cached_text(sig, ddir, style, n_values)
    fmt_digest = hashlib.sha256(json.dumps(styles()[style], sort_keys=True).encode()).hexdigest()
    key = json.dumps([sig, style, n_values, MAX_VALUE_CHARS, MAX_COMMENT_CHARS, fmt_digest], default=str)
    path = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    text = _cached_text(sig, ddir, style, n_values)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return text
