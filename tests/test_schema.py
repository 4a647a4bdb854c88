"""Schema text for prompts: expected text of a tiny database (fixture files), caching, safety."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from matsql.benchmarks.schema import (
    Column,
    DbSchema,
    ForeignKey,
    Table,
    read_schema,
    render,
    schema_text,
)

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.sqlite"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript((FIX / "schema_tiny.sql").read_text())
        conn.commit()
    return path


@pytest.mark.parametrize("style", ["mats", "macsql"])
def test_expected_text(tiny: Path, style: str) -> None:
    expected = (FIX / f"schema_tiny.{style}.txt").read_text().rstrip("\n")
    assert schema_text(tiny, FIX / "tiny_descriptions", style=style) == expected


def test_read_schema_structure(tiny: Path) -> None:
    s = read_schema(tiny, FIX / "tiny_descriptions")
    assert [t.name for t in s.tables] == ["owners", "pets", "visits"]
    pets = s.tables[1]
    by = {c.name: c for c in pets.columns}
    assert by["pet_id"].primary_key and not by["owner_id"].primary_key
    assert by["notes"].values == ("A very long note about this particula...", "talks")  # NULL, '' skipped
    assert by["photo"].values == ()  # BLOBs are not shown
    assert [c.primary_key for c in s.tables[2].columns] == [True, True, False]
    assert s.foreign_keys == (
        ForeignKey("pets", "owner_id", "owners", "id"),  # REFERENCES owners -> its primary key
        ForeignKey("visits", "pet_id", "pets", "pet_id"),
    )


def test_n_values(tiny: Path) -> None:
    s = read_schema(tiny, n_values=1)
    assert all(len(c.values) <= 1 for t in s.tables for c in t.columns)
    assert read_schema(tiny, n_values=0).tables[0].columns[1].values == ()


def test_no_descriptions_no_comments(tiny: Path) -> None:
    text = schema_text(tiny)
    assert "comment :" not in text
    assert text.splitlines()[-1] == "visits.pet_id = pets.pet_id"


def test_render_without_foreign_keys_and_unknown_style() -> None:
    s = DbSchema((Table("t", (Column("a", "", False, "", ()),)),), ())
    assert render(s) == "database schema :\ntable t , columns = [ t.a ]\nforeign keys : None"
    with pytest.raises(ValueError, match="unknown schema style"):
        render(s, "nope")


def test_database_file_is_not_modified(tiny: Path) -> None:
    before = hashlib.sha256(tiny.read_bytes()).hexdigest()
    schema_text(tiny, FIX / "tiny_descriptions")
    read_schema(tiny)
    assert hashlib.sha256(tiny.read_bytes()).hexdigest() == before
    assert not list(tiny.parent.glob("*-journal")) and not list(tiny.parent.glob("*-wal"))


def test_cache_follows_file_changes(tiny: Path) -> None:
    first = schema_text(tiny)
    assert schema_text(tiny) is first  # memory cache hit
    with closing(sqlite3.connect(tiny)) as conn:
        conn.execute("CREATE TABLE extra (x TEXT)")
        conn.commit()
    st = tiny.stat()
    os.utime(tiny, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert "table extra" in schema_text(tiny)


def test_disk_cache(tiny: Path, tmp_path: Path) -> None:
    cache = tmp_path / "schema-cache"
    text = schema_text(tiny, cache_dir=cache)
    files = list(cache.glob("*.txt"))
    assert len(files) == 1 and files[0].read_text() == text
    files[0].write_text("from disk")  # a second call reads the file, not the database
    assert schema_text(tiny, cache_dir=cache) == "from disk"


def test_read_only_open_refuses_writes(tiny: Path) -> None:
    from matsql.benchmarks.schema import connect_ro

    with closing(connect_ro(tiny)) as conn, pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("CREATE TABLE nope (a INT)")


def test_real_superhero_and_every_spider_database() -> None:
    from matsql.benchmarks.paths import data_root

    root = data_root()
    hero = root / "bird" / "dev" / "dev_databases" / "superhero"
    spider = sorted((root / "spider" / "database").glob("*/*.sqlite"))
    if not (hero / "superhero.sqlite").exists() or not spider:
        pytest.skip(f"superhero / Spider databases not found under {root}")
    text = schema_text(hero / "superhero.sqlite", hero / "database_description")
    assert "superhero.full_name ( text | comment : the full name of the superhero" in text
    assert "hero_power.hero_id = superhero.id" in text
    assert all(read_schema(p).tables for p in spider)  # every file opens read-only and has tables
