"""Gating policies: when does the fixer run on a candidate (DESIGN.md "Gating")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

GatePolicy = Literal["exec_error", "critique", "exec_error_or_critique", "always", "never"]
POLICIES: tuple[str, ...] = ("exec_error", "critique", "exec_error_or_critique", "always", "never")


def should_fix(policy: str, exec_ok: bool, verdicts: Mapping[str, str]) -> bool:
    """``exec_ok`` is whether the planner SQL executed; ``verdicts`` maps validator -> verdict.

    ``critique`` fires when any validator concluded ``incorrect``; an ``unknown`` verdict (no
    parsable conclusion) does not fire it.
    """
    flagged = any(v == "incorrect" for v in verdicts.values())
    if policy == "exec_error":
        return not exec_ok
    if policy == "critique":
        return flagged
    if policy == "exec_error_or_critique":
        return (not exec_ok) or flagged
    if policy == "always":
        return True
    if policy == "never":
        return False
    raise ValueError(f"unknown gating policy {policy!r}; expected one of {POLICIES}")
