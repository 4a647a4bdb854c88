"""BIRD ``database_description/<table>.csv`` files -> column descriptions.

The official files are inconsistent: some start with a UTF-8 BOM, a few are cp1252 (bullets and
dashes), some use CRLF, and column names may carry stray spaces or differ in case from the
SQLite schema. Decoding tries utf-8-sig, then cp1252, then latin-1 (which never fails), and
lookups are by stripped, lower-cased table and column name.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

ENCODINGS: tuple[str, ...] = ("utf-8-sig", "cp1252", "latin-1")
REQUIRED = ("original_column_name", "column_description")


@dataclass(frozen=True)
class ColumnDescription:
    name: str  # expanded column name ("column_name"), may be empty
    description: str  # "column_description"
    value_description: str  # "value_description" (value meanings, units, caveats)


def decode(raw: bytes) -> str:
    """Text of a description file under the first encoding that decodes it."""
    for enc in ENCODINGS:
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def read_description_csv(path: Path) -> dict[str, ColumnDescription]:
    """One table's file: lower-cased original column name -> description."""
    reader = csv.DictReader(io.StringIO(decode(path.read_bytes()), newline=""))
    header = [h.strip().lstrip("\ufeff") for h in reader.fieldnames or []]
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise ValueError(f"{path}: description file lacks columns {missing} (header: {header})")
    reader.fieldnames = header
    out: dict[str, ColumnDescription] = {}
    for row in reader:
        col = _clean(row.get("original_column_name"))
        if not col:
            continue
        out[col.lower()] = ColumnDescription(
            name=_clean(row.get("column_name")),
            description=_clean(row.get("column_description")),
            value_description=_clean(row.get("value_description")),
        )
    return out


def read_descriptions(folder: Path) -> dict[str, dict[str, ColumnDescription]]:
    """All tables of one database: lower-cased table name -> column -> description.

    An absent folder (Spider) gives an empty mapping.
    """
    if not folder.is_dir():
        return {}
    return {p.stem.strip().lower(): read_description_csv(p) for p in sorted(folder.glob("*.csv"))}
