"""Paths as committed results should show them: relative to the repository, or starting at a
run folder's name, never a machine's absolute path (``/root/...``, ``/tmp/...``).

Reports, comparisons and published cards name their inputs; a reader on another machine should
be able to follow those names inside a clone (``runs/demo/eval-collab/picks.jsonl``) or inside
the results folder (``study-spider/eval-collab/picks.jsonl``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


def relative_to_cwd(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it lies inside it, else as given: the
    same file from the same place, written without the machine's root. Run headers record
    paths this way, so a run's config hash and the committed header hold no absolute path when
    its inputs sit inside the checkout it ran from (lossless, unlike :func:`portable_path`)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return Path(os.path.normpath(p)).relative_to(Path.cwd().absolute()).as_posix() or "."
    except ValueError:
        return str(path)


_ABS = re.compile(r"(?<![\w.~$-])/(?:root|tmp|home|work|scratch|mnt|Users)(?:/[^\s\"'`,;:()\[\]{}<>|]*)?")


def portable_text(text: str, base: str | os.PathLike[str] | None = None) -> str:
    """Every absolute path under a machine's usual roots in ``text`` rewritten by
    :func:`portable_path` (for logs and JSON that quote commands)."""
    return _ABS.sub(lambda m: portable_path(m.group(0), base), text)
