"""Output parsers shared by agents. They never raise: a missing part is ``None``/``unknown``."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```(?:[a-zA-Z]+)?\s*\n?(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```(?:[a-zA-Z]+)?\s*\n(.*)$", re.DOTALL)
_BARE_SQL = re.compile(r"^\s*((?:SELECT|WITH)\b.*?)(?:\n\s*\n|$)", re.DOTALL | re.IGNORECASE)
_CONCLUDE = re.compile(r"conclude\s*:\s*\**\s*(correct|incorrect)\b", re.IGNORECASE)


def clean_sql(sql: str) -> str | None:
    sql = sql.strip().rstrip(";").strip()
    return sql or None


def extract_sql(text: str, after: str | None = None) -> str | None:
    """The SQL of an agent's answer: the last fenced block after ``after`` (if given and present),
    else the last fenced block, else an unterminated fence (generation hit max_tokens after the
    SQL), else bare ``SELECT``/``WITH`` text."""
    if after:
        idx = text.rfind(after)
        if idx >= 0:
            tail = extract_sql(text[idx + len(after) :])
            if tail:
                return tail
    blocks = [b for b in _FENCE.findall(text) if b.strip()]
    if blocks:
        return clean_sql(blocks[-1])
    m = _OPEN_FENCE.search(text)
    if m and m.group(1).strip():
        return clean_sql(m.group(1))
    m = _BARE_SQL.search(text)
    if m:
        return clean_sql(m.group(1))
    return None


def extract_verdict(text: str) -> str:
    """``correct``/``incorrect`` from the last ``Conclude:`` line, else ``unknown``."""
    found = _CONCLUDE.findall(text)
    return found[-1].lower() if found else "unknown"
