"""Small file helpers shared by every stage: JSONL reading with errors that name file and line,
and file hashes (recorded in run manifests, label metadata and training runs)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file (``.gz`` too). A line that is
    not a JSON object raises ``error`` naming ``path:line``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def replace_dataset_dir(tmp: str | Path, dest: str | Path) -> None:
    """Move a finished datasets folder ``tmp`` into ``dest``. What stood there is removed only if
    it was a datasets folder or an empty folder (e.g. left by a copy that skipped the data);
    anything else is somebody's files and stops the write."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists():
        if not (dest / "dataset_dict.json").exists() and any(dest.iterdir()):
            raise FileExistsError(f"{dest} exists and is not a datasets folder; refusing to overwrite it")
        shutil.rmtree(dest)
    tmp.rename(dest)


def read_yaml(
    path: str | Path, what: str, error: type[Exception] = ValueError, missing: type[Exception] | None = None
) -> Any:
    """A user's YAML file, with errors that name it: ``missing`` (default ``error``) when it does
    not exist, ``error`` when it does not parse."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise (missing or error)(f"{what} not found: {path}") from e
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML: {e}") from e
