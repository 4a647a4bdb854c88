"""Data folder resolution and the missing-file error."""

from __future__ import annotations

from pathlib import Path

import pytest

from matsql.benchmarks.paths import BenchmarkDataError, cache_root, data_root, read_json_list, require


def test_data_root_uses_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATSQL_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()


def test_data_root_default_is_relative_to_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MATSQL_DATA", raising=False)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert data_root() == (tmp_path / "shared" / "data").resolve()


def test_cache_root_uses_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MATSQL_CACHE", str(tmp_path))
    assert cache_root() == tmp_path.resolve()


def test_require_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "spider" / "dev.json"
    with pytest.raises(BenchmarkDataError) as e:
        require(missing, "Spider dev questions")
    assert str(missing) in str(e.value) and "MATSQL_DATA" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    (tmp_path / "here.txt").write_text("x")
    assert require(tmp_path / "here.txt", "x") == tmp_path / "here.txt"


def test_read_json_list_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "dev.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match=r"dev\.json: invalid JSON"):
        read_json_list(bad, "questions")
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"dev\.json: expected a JSON list"):
        read_json_list(bad, "questions")
    bad.write_text('[{"a": 1}]')
    assert read_json_list(bad, "questions") == [{"a": 1}]
    with pytest.raises(BenchmarkDataError):
        read_json_list(tmp_path / "absent.json", "questions")
