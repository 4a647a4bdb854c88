"""ExecResult -> records.ExecInfo: what a rollout record keeps of an execution, and the short
rendered preview that agent prompts show as the "execution response"."""

from __future__ import annotations

from matsql.records import ExecInfo
from matsql.sql.execute import MAX_CELL_CHARS, PREVIEW_ROWS, ExecResult, render_preview

__all__ = ["MAX_CELL_CHARS", "render_preview", "to_exec_info"]


def to_exec_info(result: ExecResult, preview_rows: int = PREVIEW_ROWS) -> ExecInfo:
    """Keep the digest (for EX and voting), the row count, a preview (for prompts) and the error.
    Works on a result with rows or on a worker's summary (digest, row count and preview)."""
    if result.status == "ok":
        if result.rows is not None:
            rows = result.rows
            return ExecInfo(
                status="ok",
                rows_digest=result.rows_digest(),
                n_rows=len(rows),
                preview=render_preview(result.columns, rows, preview_rows),
                elapsed_s=result.elapsed_s,
            )
        return ExecInfo(
            status="ok",
            rows_digest=result.digest,
            n_rows=result.n_rows,
            preview=result.preview,
            elapsed_s=result.elapsed_s,
        )
    return ExecInfo(status=result.status, error=result.error, elapsed_s=result.elapsed_s)
