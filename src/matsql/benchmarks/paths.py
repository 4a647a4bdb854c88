"""Where benchmark data lives, and clear errors when a file is absent or malformed.

Data is read in place (never copied into the repository): ``MATSQL_DATA`` names the folder,
otherwise ``../shared/data`` relative to the current directory (the layout of a checkout that
sits beside the shared data folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_ENV = "MATSQL_DATA"
DEFAULT_DATA = "../shared/data"
CACHE_ENV = "MATSQL_CACHE"


class BenchmarkDataError(FileNotFoundError):
    """A benchmark file or folder the loader needs is absent."""


def data_root() -> Path:
    """The benchmark data folder: ``$MATSQL_DATA`` if set, else ``../shared/data`` from the cwd."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA).expanduser().resolve()


def cache_root() -> Path:
    """Folder for derived, rebuildable artefacts (built minibench, schema texts)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "matsql"


def require(path: Path, what: str, hint: str | None = None) -> Path:
    """Return ``path`` if it exists, else raise an error that names it and says how to fix it."""
    if not path.exists():
        current = os.environ.get(DATA_ENV) or f"unset, so {DEFAULT_DATA} from {Path.cwd()}"
        fix = hint or (
            f"Point {DATA_ENV} at the benchmark data folder ({DATA_ENV} is {current}) or pass root=... / --data PATH."
        )
        raise BenchmarkDataError(f"{what} not found at {path}. {fix}")
    return path


def read_json_list(path: Path, what: str) -> list[dict[str, Any]]:
    """A JSON file holding a list of objects, with errors that name the file."""
    require(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    return data
