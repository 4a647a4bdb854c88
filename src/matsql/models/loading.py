"""Load resolved models: GGUF dequantized to dense tensors (cached as safetensors), HF folders as
they are; tokenizers; the dense folder vLLM reads; PEFT adapter names."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matsql.fileio import atomic_dir, write_text_atomic
from matsql.models.catalog import READ_CHUNK, ModelResolutionError, models_dir
from matsql.models.resolution import ResolvedModel, resolve_model

if TYPE_CHECKING:  # torch/transformers are optional ([ml] extra); imported lazily below
    import torch

log = logging.getLogger(__name__)


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
            model, tok = _dequantize(r, dt, cache=cache)
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


def dense_folder(
    spec: str | os.PathLike[str] | ResolvedModel, *, dtype: Any = "bfloat16"
) -> tuple[Path, str]:
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
            _dequantize(r, dt, cache=True)
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
            while chunk := fh.read(READ_CHUNK):
                h.update(chunk)
    digest = h.hexdigest()
    if r.kind == "gguf":  # our own cache folder: remember the digest; a user's folder stays untouched
        write_text_atomic(stamp, json.dumps(meta | {"weights_sha256": digest}, indent=1, default=str))
    return folder, digest


def adapter_name_for(path: str | os.PathLike[str]) -> str:
    """A PEFT adapter name (no dots: names become module keys) unique to an adapter folder."""
    p = Path(path).expanduser().resolve()
    stem = re.sub(r"\W", "_", p.name) or "adapter"
    return f"{stem}_{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"


def _dequantize(r: ResolvedModel, dtype: torch.dtype, *, cache: bool) -> tuple[Any, Any]:
    """Load a GGUF dense in ``dtype``; with ``cache``, keep it as ``dequantized_dir`` (the one
    writer of that cache: loaders and ``dense_folder`` both read it)."""
    model, tok = _load_gguf(r, dtype)
    if cache:
        meta = {"source": r.source, "gguf": r.path.name, "sha256": r.sha256}
        save_hf_dir(model, tok, dequantized_dir(r, dtype), meta=meta)
    return model, tok


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
    with atomic_dir(out_dir, keep_existing=lambda d: (d / "matsql.json").is_file()) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "matsql.json").write_text(json.dumps(meta or {}, indent=1, default=str))
    return out_dir
