"""ExecResult -> ExecInfo: digest consistent with EX, counts, a compact preview, errors kept."""

from __future__ import annotations

from matsql.records import ExecInfo
from matsql.sql import ExecResult, rows_digest, to_exec_info


def test_ok_result_keeps_digest_count_and_preview() -> None:
    rows = [(i, f"name {i}", None if i % 2 else i / 4) for i in range(7)]
    info = to_exec_info(ExecResult("ok", rows, None, 0.25, ("id", "name", "x")), preview_rows=3)
    assert isinstance(info, ExecInfo)
    assert (info.status, info.n_rows, info.rows_digest, info.error) == ("ok", 7, rows_digest(rows), None)
    assert (
        info.preview
        == "id | name | x\n0 | name 0 | 0.0\n1 | name 1 | NULL\n2 | name 2 | 0.5\n... (7 rows, first 3 shown)"
    )
    assert info.elapsed_s == 0.25


def test_digest_ignores_order_and_duplicates_like_ex() -> None:
    a = to_exec_info(ExecResult("ok", [(1, "a"), (2, "b")], None, 0.0, ("x", "y")))
    b = to_exec_info(ExecResult("ok", [(2, "b"), (1.0, "a"), (2, "b")], None, 0.0, ("x", "y")))
    c = to_exec_info(ExecResult("ok", [(2, "b")], None, 0.0, ("x", "y")))
    assert a.rows_digest == b.rows_digest != c.rows_digest


def test_preview_is_one_line_per_row_and_truncates_long_cells() -> None:
    long = "word " * 30
    info = to_exec_info(ExecResult("ok", [("multi\nline", long, b"\x00\x01")], None, 0.0, ("a", "b", "c")))
    lines = (info.preview or "").splitlines()
    assert lines[1].startswith("multi line | word word") and lines[1].endswith("| <blob 2 bytes>")
    assert len(lines[1].split(" | ")[1]) == 40 and lines[1].split(" | ")[1].endswith("…")
    assert lines[2] == "(1 row)"


def test_empty_result_preview() -> None:
    info = to_exec_info(ExecResult("ok", [], None, 0.0, ("a",)))
    assert (info.n_rows, info.preview) == (0, "a\n(0 rows)")
    assert info.rows_digest == rows_digest([])


def test_failures_keep_status_and_error_only() -> None:
    for status in ("error", "timeout"):
        info = to_exec_info(ExecResult(status, None, "boom", 1.5))
        assert (info.status, info.error, info.rows_digest, info.n_rows, info.preview) == (
            status,
            "boom",
            None,
            None,
            None,
        )
