"""Small file helpers shared by every stage: JSONL reading with errors that name file and line,
file hashes (recorded in run manifests, label metadata and training runs), and the one way to
write a file or a folder atomically (:func:`atomic_write`, :func:`atomic_write_gzip`,
:func:`atomic_dir`)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_gzip_path(path: str | Path) -> bool:
    return Path(path).suffix == ".gz"


def _decode_line(raw: bytes, path: Path, lineno: int, error: type[Exception]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        ) from None


def iter_lines(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file (``.gz``: gzip). A byte that is not
    UTF-8, or a damaged gzip stream, raises ``error`` naming ``path:line`` in one line."""
    path = Path(path)
    lineno = 0
    try:
        with gzip.open(path, "rb") if is_gzip_path(path) else path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                yield lineno, _decode_line(raw, path, lineno, error)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        where = f"{path}:{lineno + 1}" if lineno else str(path)
        raise error(f"{where}: not a valid gzip file ({e or type(e).__name__})") from None


def read_text(path: str | Path, error: type[Exception] = ValueError) -> str:
    """A whole UTF-8 text file (``.gz``: gzip); decoding errors name ``path:line``."""
    return "".join(text for _, text in iter_lines(path, error))


def iter_jsonl(path: str | Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file (``.gz`` too). A line that is
    not UTF-8 or not a JSON object raises ``error`` naming ``path:line``."""
    path = Path(path)
    for lineno, line in iter_lines(path, error):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def open_text_out(path: str | Path):  # type: ignore[no-untyped-def]
    """A text file for writing: gzip when the name ends in ``.gz`` (an output named ``X.gz`` is
    always gzip), else plain UTF-8."""
    path = Path(path)
    if is_gzip_path(path):
        return gzip.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, encoding: str = "utf-8", errors: str | None = None
) -> Iterator[IO[Any]]:
    """A handle on a new temp file beside ``path`` (``mode`` ``"w"`` text or ``"wb"`` bytes) that
    replaces ``path`` in one rename when the block ends without an error; on an error the temp file
    is removed and ``path`` keeps what it had. A reader never sees a half-written file, and
    concurrent writers never share a temp file (its name carries the pid and a random tag). The
    parent folder must exist; the file gets the usual permissions (umask), as ``open`` gives."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    if mode == "wb":
        fh: IO[Any] = tmp.open("xb")
    else:
        fh = tmp.open("x", encoding=encoding, errors=errors)
    try:
        with fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> None:
    """``path`` holds ``text`` (UTF-8), written through :func:`atomic_write`."""
    with atomic_write(path, encoding=encoding) as fh:
        fh.write(text)


class _GzipText:
    """Text into a gzip stream, encoded as it comes: no ``TextIOWrapper``, whose flush on close
    would add a sync marker and change the bytes."""

    def __init__(self, gz: gzip.GzipFile, encoding: str, errors: str):
        self._gz, self._encoding, self._errors = gz, encoding, errors

    def write(self, text: str) -> int:
        self._gz.write(text.encode(self._encoding, self._errors))
        return len(text)


@contextlib.contextmanager
def atomic_write_gzip(
    path: str | Path, *, name: str = "", mtime: int = 0, encoding: str = "utf-8", errors: str = "strict"
) -> Iterator[_GzipText]:
    """A text handle whose text ``path`` holds gzipped, written through :func:`atomic_write`.
    The gzip header names ``name`` and ``mtime`` (by default none and 0), never the temp file or
    the clock, so the same text always gives the same bytes."""
    with (
        atomic_write(path, "wb") as raw,
        gzip.GzipFile(filename=name, fileobj=raw, mode="wb", mtime=mtime) as gz,
    ):
        yield _GzipText(gz, encoding, errors)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, keep_existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A new empty folder beside ``path`` to fill; when the block ends without an error it takes
    the place of ``path``, and on an error it is removed and ``path`` keeps what it had. What
    stood at ``path`` is moved aside, replaced, then deleted, unless ``keep_existing(path)`` says
    to keep it (the new folder is then dropped); ``keep_existing`` may raise to refuse both. The
    folder gets the usual permissions (umask); the parent folder must exist."""
    path = Path(path)
    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp, old = path.with_name(f".{path.name}.{tag}.tmp"), path.with_name(f".{path.name}.{tag}.old")
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            if keep_existing is not None and keep_existing(path):
                shutil.rmtree(tmp)
                return
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # a rename in between failed: put it back
            old.rename(path)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def only_datasets_folder(dest: Path) -> bool:
    """``keep_existing`` for a datasets folder written by :func:`atomic_dir`: what stands at
    ``dest`` is replaced only if it is a datasets folder or an empty folder (e.g. left by a copy
    that skipped the data); anything else is somebody's files and stops the write."""
    if not (dest / "dataset_dict.json").exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not a datasets folder; refusing to overwrite it")
    return False


def read_yaml(
    path: str | Path, what: str, error: type[Exception] = ValueError, missing: type[Exception] | None = None
) -> Any:
    """A user's YAML file, with errors that name it: ``missing`` (default ``error``) when it does
    not exist, ``error`` when it does not parse."""
    import yaml

    path = Path(path)
    try:
        text = read_text(path, error)
    except FileNotFoundError as e:
        raise (missing or error)(f"{what} not found: {path}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: invalid YAML: {e}") from e
