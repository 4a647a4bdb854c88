"""How an execution result is shown to agents (the "execution response")."""

from __future__ import annotations

from matsql.records import ExecInfo


def render_execution(info: ExecInfo | None) -> str:
    if info is None:
        return "(not executed)"
    if info.status == "ok":
        n = info.n_rows if info.n_rows is not None else "?"
        preview = (info.preview or "").strip()
        return f"{n} row(s)" + (f":\n{preview}" if preview else "")
    if info.status == "timeout":
        return "Error: the query timed out."
    if info.status == "no_sql":
        return "Error: no SQL query was found."
    if info.status == "missing_db":
        return "Error: database not available."
    return f"Error: {info.error or 'execution failed'}"
