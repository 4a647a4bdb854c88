"""Paths as committed results should show them: relative to the repository, or starting at a
run folder's name, never a machine's absolute path (``/root/...``, ``/tmp/...``).

Reports, comparisons and published cards name their inputs; a reader on another machine should
be able to follow those names inside a clone (``runs/demo/eval-collab/picks.jsonl``) or inside
the results folder (``study-spider/eval-collab/picks.jsonl``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

_REPO_MARKERS = (".git", "pyproject.toml")


def repo_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) that holds a
    ``.git`` entry or a ``pyproject.toml``; None outside any checkout."""
    here = Path(start or Path.cwd()).absolute()
    for cand in (here, *here.parents):
        if any((cand / m).exists() for m in _REPO_MARKERS):
            return cand
    return None


def portable_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """``path`` as a string fit to commit.

    A relative path is kept as given. An absolute one becomes relative to the repository (or
    the working directory) when it lies inside it; else, when ``base`` (e.g. the folder being
    written) shares a folder with it, the path from that shared folder's name on
    (``/tmp/demo-run4/eval-collab/x`` with base ``/tmp/demo-run4/compare`` ->
    ``demo-run4/eval-collab/x``); else only its last two parts.
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    p = Path(os.path.normpath(p))
    for root in (repo_root(), Path.cwd().absolute()):
        if root is not None and root != Path(root.anchor):
            try:
                return p.relative_to(root).as_posix() or "."
            except ValueError:
                pass
    if base is not None:
        b = Path(os.path.normpath(Path(base).absolute()))
        common = Path(os.path.commonpath([p, b]))
        if common != Path(common.anchor):
            return (Path(common.name) / p.relative_to(common)).as_posix()
    return Path(*p.parts[-2:]).as_posix()


ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~$-])/(?:root|tmp|home|work|scratch|mnt|Users)(?:/[^\s\"'`,;:()\[\]{}<>|]*)?"
)


def portable_text(text: str, base: str | os.PathLike[str] | None = None) -> str:
    """Every absolute path under a machine's usual roots in ``text`` rewritten by
    :func:`portable_path` (for logs and JSON that quote commands)."""
    return ABSOLUTE_PATH.sub(lambda m: portable_path(m.group(0), base), text)


def _map_strings(obj: Any, fix: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, dict):
        return {k: _map_strings(v, fix) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(v, fix) for v in obj]
    return obj


def portable_record_line(
    line: str, base: str | os.PathLike[str] | None = None, fix: Callable[[str], str] | None = None
) -> str:
    """One JSONL line of a rollout (or picks) file fit to commit: the header's every string (its
    config names adapters and ``planner_from`` by path) and a record's ``models`` (agent ->
    ``model+adapter path``) through ``fix`` (default :func:`portable_text` with ``base``). What
    agents wrote (outputs, SQL) is data and stays byte for byte; so does ``config_hash``, the hash
    of the config as the run wrote it on its machine. A line that is not a JSON object is kept."""
    fix = fix or (lambda text: portable_text(text, base))
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return line
    if not isinstance(rec, dict):
        return line
    if rec.get("kind") == "header":
        new = {k: (v if k == "config_hash" else _map_strings(v, fix)) for k, v in rec.items()}
    elif isinstance(rec.get("models"), dict):
        new = rec | {"models": _map_strings(rec["models"], fix)}
    else:
        return line
    if new == rec:
        return line
    return json.dumps(new, ensure_ascii=False) + ("\n" if line.endswith("\n") else "")
