"""BIRD description CSVs: encodings, BOM, CRLF, stray spaces, case."""

from __future__ import annotations

from pathlib import Path

import pytest

from matsql.benchmarks.descriptions import decode, read_description_csv, read_descriptions

HEADER = "original_column_name,column_name,column_description,data_format,value_description\r\n"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"\xef\xbb\xbfabc", "abc"),  # BOM dropped
        ("caf\u00e9".encode(), "caf\u00e9"),  # utf-8
        (b"a \x95 b \x96 c", "a \u2022 b \u2013 c"),  # cp1252 bullet and dash
        (b"a \x81", "a \x81"),  # undefined in cp1252: latin-1 fallback
    ],
)
def test_decode(raw: bytes, text: str) -> None:
    assert decode(raw) == text


def test_read_csv_cleans_names_and_text(tmp_path: Path) -> None:
    p = tmp_path / "frpm.csv"
    body = (
        HEADER
        + 'School Code ,,School Code,integer,\r\nCDSCode,cds code,"the\r\n  code",text,"1: yes\r\n0: no"\r\n'
    )
    p.write_bytes(b"\xef\xbb\xbf" + body.encode())
    d = read_description_csv(p)
    assert set(d) == {"school code", "cdscode"}
    assert d["cdscode"].description == "the code"
    assert d["cdscode"].name == "cds code"
    assert d["cdscode"].value_description == "1: yes 0: no"


def test_header_without_required_columns_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("col,desc\nx,y\n")
    with pytest.raises(ValueError, match=r"t.csv.*original_column_name"):
        read_description_csv(p)


def test_read_descriptions_folder(tmp_path: Path) -> None:
    assert read_descriptions(tmp_path / "absent") == {}
    (tmp_path / "Player_Attributes.csv").write_bytes(
        (HEADER + "id,,the id \u2022 key,integer,\r\n").encode("cp1252")
    )
    d = read_descriptions(tmp_path)
    assert d["player_attributes"]["id"].description == "the id \u2022 key"


def test_real_bird_descriptions_all_decode() -> None:
    from matsql.benchmarks.paths import data_root

    folder = data_root() / "bird" / "dev" / "dev_databases"
    if not folder.exists():
        pytest.skip(f"BIRD dev descriptions not found at {folder}")
    dbs = sorted(p for p in folder.iterdir() if (p / "database_description").is_dir())
    assert dbs
    for db in dbs:
        tables = read_descriptions(db / "database_description")
        assert tables and all(cols for cols in tables.values()), db.name
