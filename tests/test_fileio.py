"""The one atomic writer (matsql.fileio): files, gzip files and folders, all or nothing, no temp left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matsql.fileio import atomic_dir, atomic_write, atomic_write_gzip, only_datasets_folder, write_text_atomic


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


def test_gzip_text_has_a_fixed_header_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    """The gzip writer: the header names neither the temp file nor the clock, and the bytes are
    those of one GzipFile write of the text (what eval-sql wrote before, in two steps)."""
    import gzip
    import io

    lines = [f'{{"question_id": "q{i}", "note": "é"}}\n' for i in range(3000)]
    p = tmp_path / "out.jsonl.gz"
    with atomic_write_gzip(p) as fh:
        for line in lines:
            fh.write(line)
    want = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=want, mode="wb", mtime=0) as gz:
        gz.write("".join(lines).encode())
    assert p.read_bytes() == want.getvalue()
    assert p.read_bytes()[3] == 0 and p.read_bytes()[4:8] == b"\0\0\0\0"  # no name, mtime 0
    assert gzip.decompress(p.read_bytes()).decode() == "".join(lines)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out.jsonl.gz"]
    with pytest.raises(RuntimeError), atomic_write_gzip(p) as fh:
        fh.write("half")
        raise RuntimeError
    assert p.read_bytes() == want.getvalue()


def test_atomic_dir_replaces_a_folder_or_keeps_it_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()  # readers see nothing until the block ends
    assert (out / "a.txt").read_text() == "one"
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(x.name for x in out.iterdir()) == ["b.txt"]  # replaced, not merged
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("half")
        raise RuntimeError
    assert sorted(x.name for x in out.iterdir()) == ["b.txt"]
    with atomic_dir(out, keep_existing=lambda d: (d / "b.txt").is_file()) as tmp:
        (tmp / "d.txt").write_text("lost")
    assert sorted(x.name for x in out.iterdir()) == ["b.txt"]  # a finished folder is kept
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model"]  # no temp or old folder left


def test_a_datasets_folder_replaces_only_a_datasets_or_empty_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a datasets folder"):
        with atomic_dir(mine, keep_existing=only_datasets_folder) as tmp:
            (tmp / "dataset_dict.json").write_text("{}")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["mine"]
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    for dest in (tmp_path / "empty", tmp_path / "empty"):  # empty, then a datasets folder
        with atomic_dir(dest, keep_existing=only_datasets_folder) as tmp:
            (tmp / "dataset_dict.json").write_text('{"splits": []}')
        assert (dest / "dataset_dict.json").is_file()
