"""The one atomic writer (matsql.fileio.atomic_write): all or nothing, no temp file left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matsql.fileio import atomic_write, write_text_atomic


def test_atomic_write_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    p.write_text("old\n")
    with atomic_write(p) as fh:
        fh.write("é new\n")
        assert p.read_text() == "old\n"  # readers see the old file until the block ends
    assert p.read_bytes() == "é new\n".encode()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.jsonl"]
    write_text_atomic(p, "text")
    assert p.read_text() == "text"
    with atomic_write(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_an_error_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    p = tmp_path / "out.json"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(p) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.json"]
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new.json") as fh:
        raise RuntimeError
    assert not (tmp_path / "new.json").exists()


def test_permissions_follow_the_umask_and_modes_are_checked(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "a", "a"):
        pass
