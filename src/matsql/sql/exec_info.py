"""ExecResult -> records.ExecInfo: what a rollout record keeps of an execution, and the short
rendered preview that agent prompts show as the "execution response"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matsql.records import ExecInfo
from matsql.sql.compare import rows_digest
from matsql.sql.execute import ExecResult

MAX_CELL_CHARS = 40


def _cell(v: Any) -> str:
    if v is None:
        text = "NULL"
    elif isinstance(v, bytes):
        text = f"<blob {len(v)} bytes>"
    elif isinstance(v, float):
        text = repr(v)
    else:
        text = str(v)
    text = " ".join(text.split())  # one line per row, whatever the data holds
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def render_preview(
    columns: Sequence[str] | None, rows: Sequence[Sequence[Any]], preview_rows: int = 5
) -> str:
    """A compact ``a | b`` text table of the first rows, with the total row count."""
    lines = []
    if columns:
        lines.append(" | ".join(_cell(c) for c in columns))
    lines.extend(" | ".join(_cell(v) for v in row) for row in rows[:preview_rows])
    n = len(rows)
    if n == 0:
        lines.append("(0 rows)")
    elif n > preview_rows:
        lines.append(f"... ({n} rows, first {preview_rows} shown)")
    else:
        lines.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(lines)


def to_exec_info(result: ExecResult, preview_rows: int = 5) -> ExecInfo:
    """Keep the digest (for EX and voting), the row count, a preview (for prompts) and the error."""
    if result.status == "ok":
        rows = result.rows or []
        return ExecInfo(
            status="ok",
            rows_digest=rows_digest(rows),
            n_rows=len(rows),
            preview=render_preview(result.columns, rows, preview_rows),
            elapsed_s=result.elapsed_s,
        )
    return ExecInfo(status=result.status, error=result.error, elapsed_s=result.elapsed_s)
