"""Sandboxed SQLite execution, execution-result comparison (EX) and SQL text utilities.

Names are imported lazily (PEP 562): executor worker processes import only the light
``execute``/``executor``/``compare`` modules, not pydantic (``to_exec_info``) or sqlglot (``text``),
which keeps pool start-up short.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ExecResult": "matsql.sql.execute",
    "Limits": "matsql.sql.execute",
    "SandboxedConnection": "matsql.sql.execute",
    "run_sql": "matsql.sql.execute",
    "ex_match": "matsql.sql.compare",
    "rows_digest": "matsql.sql.compare",
    "spider_order_matters": "matsql.sql.compare",
    "Executor": "matsql.sql.executor",
    "results_match": "matsql.sql.executor",
    "to_exec_info": "matsql.sql.exec_info",
    "is_select": "matsql.sql.text",
    "normalize_sql": "matsql.sql.text",
    "strip_sql": "matsql.sql.text",
}
__all__ = [
    "ExecResult",
    "Executor",
    "Limits",
    "SandboxedConnection",
    "ex_match",
    "is_select",
    "normalize_sql",
    "results_match",
    "rows_digest",
    "run_sql",
    "spider_order_matters",
    "strip_sql",
    "to_exec_info",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from matsql.sql.compare import ex_match, rows_digest, spider_order_matters
    from matsql.sql.exec_info import to_exec_info
    from matsql.sql.execute import ExecResult, Limits, SandboxedConnection, run_sql
    from matsql.sql.executor import Executor, results_match
    from matsql.sql.text import is_select, normalize_sql, strip_sql


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'matsql.sql' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
