"""Load resolved models: GGUF dequantized to dense tensors (cached as safetensors), HF folders as
they are; tokenizers; the dense folder vLLM reads; PEFT adapter names."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator
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
            with one_gguf_parse():
                tok = AutoTokenizer.from_pretrained(str(r.path.parent), gguf_file=str(r.path))
    else:
        tok = AutoTokenizer.from_pretrained(str(r.path))
    return fix_special_tokens(tok, r.path if r.kind == "gguf" else None)


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
    fix_special_tokens(tok, r.path if r.kind == "gguf" else None)
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


_GGUF_PARSE_LOCK = threading.Lock()


@contextlib.contextmanager
def one_gguf_parse() -> Iterator[None]:
    """Within the block, each GGUF file is parsed once: ``gguf.GGUFReader`` returns the first
    reader made for a path.

    Why: one transformers load reads the file's header three times (config, tokenizer, weights:
    ``load_gguf_checkpoint`` makes a new ``GGUFReader`` each time, transformers 5.17 and 5.25),
    and the reader decodes every vocabulary entry: seconds for SmolLM2, ~26 s for Qwen's 151k.
    Readers are read-only views of a memory map, so sharing one changes nothing they return.
    The lock keeps two loads in two threads from restoring each other's patch.
    """
    import gguf

    with _GGUF_PARSE_LOCK:
        original = gguf.GGUFReader
        readers: dict[str, Any] = {}

        def reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
            if mode != "r":
                return original(path, mode)
            key = os.path.realpath(os.fspath(path))
            if key not in readers:
                readers[key] = original(path, mode)
            return readers[key]

        gguf.GGUFReader = reader  # type: ignore[assignment,misc]
        try:
            yield
        finally:
            gguf.GGUFReader = original  # type: ignore[misc]


def _load_gguf(r: ResolvedModel, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("loading %s (GGUF, dequantizing to %s); this is slow once, then cached", r.path, dtype)
    with one_gguf_parse():
        # fixed before the cache folder (also vLLM's dense folder) is written, so its files are right
        tok = AutoTokenizer.from_pretrained(str(r.path.parent), gguf_file=str(r.path))
        tok = fix_special_tokens(tok, r.path)
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


_GGUF_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
}


def fix_special_tokens(tok: Any, gguf_path: Path | None = None) -> Any:
    """Set bos/eos/pad from the model itself, never from what a transformers version guessed.

    Why: transformers rebuilds a GGUF's tokenizer itself, and versions disagree. 5.17 (the GPU
    image) gives SmolLM2 (llama architecture) bos = eos = ``<|im_start|>`` and no pad (its
    ``GGUFLlamaConverter`` reads eos from the bos id, then swaps the two), and Qwen2.5 eos
    ``<|endoftext|>`` (the GGUF's eos id is not read); 5.25 reads the ids the file declares
    (``<|im_end|>`` for both). A tokenizer saved by 5.17 (a dequantized cache folder, a run
    folder) keeps the wrong tokens on every version. Generation must stop, and an eos-appending
    trainer must append, at the token that closes an assistant turn. (matsql's training rows
    never used eos: ``train.encoding`` appends the template's closing token and TRL adds no eos
    to pre-tokenised rows; eos reached the saved tokenizer files, model configs via the
    Trainer's token alignment, and stop ids, which also list ``<|im_end|>`` itself.) In order:

    1. a GGUF's tokenizer takes bos, eos, pad and unk ids the file declares
       (``tokenizer.ggml.*_token_id``, what llama.cpp uses), where it declares them;
    2. with a chat template whose assistant turn ends in one added token (ChatML ``<|im_end|>``,
       Llama-3 ``<|eot_id|>``), that token is eos; a pad equal to the eos it replaces (the
       stand-in a missing pad got) follows it;
    3. no pad: pad = eos (padding is masked out of every loss and cut from every output).

    Idempotent; returns ``tok``, changed in place; logs what it changed.
    """
    before = {a: getattr(tok, a) for a in _GGUF_SPECIAL_IDS}
    if gguf_path is not None:
        declared = gguf_metadata(gguf_path, _GGUF_SPECIAL_IDS.values())
        for attr, key in _GGUF_SPECIAL_IDS.items():
            i = declared.get(key)
            if i is None:
                continue
            if not 0 <= int(i) < len(tok):
                raise ValueError(f"{gguf_path}: {key} = {i} is outside the tokenizer's {len(tok)} ids")
            setattr(tok, attr, tok.convert_ids_to_tokens(int(i)))
    eot = chat_end_of_turn(tok)
    if eot is not None and tok.eos_token != eot:
        if tok.pad_token == tok.eos_token:
            tok.pad_token = eot
        tok.eos_token = eot
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    changed = {a: (v, getattr(tok, a)) for a, v in before.items() if getattr(tok, a) != v}
    if changed:
        log.info(
            "special tokens of %s set from the %s: %s",
            getattr(tok, "name_or_path", "?"),
            "GGUF header and chat template" if gguf_path is not None else "chat template",
            ", ".join(f"{a} {old!r} -> {new!r}" for a, (old, new) in changed.items()),
        )
    return tok


_EOT_PROBE = "\u2063MATSQL-END-OF-TURN\u2063"


def chat_end_of_turn(tok: Any) -> str | None:
    """The added token that closes an assistant turn in the tokenizer's chat template, or None
    (no template, a template that fails on a plain user/assistant chat, or a closing text that is
    not exactly one added token)."""
    if not getattr(tok, "chat_template", None):
        return None
    from jinja2 import TemplateError

    chat = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _EOT_PROBE}]
    try:
        text = tok.apply_chat_template(chat, tokenize=False)
    except (TemplateError, ValueError, TypeError, KeyError) as e:
        log.debug("chat template of %s not rendered (%s); eos left as it is", tok.name_or_path, e)
        return None
    idx = text.find(_EOT_PROBE) if isinstance(text, str) else -1
    if idx < 0:
        return None
    end = text[idx + len(_EOT_PROBE) :].strip()
    return end if end and end in tok.get_added_vocab() else None


_GGUF_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: str | os.PathLike[str], keys: Any) -> dict[str, Any]:
    """The scalar metadata values named in ``keys`` that a GGUF file holds (absent keys are left
    out). Reads the header only and skips arrays (the vocabulary) without decoding them: well
    under a second for Qwen2.5's 151k tokens, where ``gguf.GGUFReader`` takes tens of seconds."""
    import mmap

    wanted, out = set(keys), {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        end = "<"
        if struct.unpack_from("<I", mm, 4)[0] > 0xFFFF:  # a big-endian file
            end = ">"
        version = struct.unpack_from(end + "I", mm, 4)[0]
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} (only 2 and later are read)")
        n_kv = struct.unpack_from(end + "Q", mm, 16)[0]
        pos = 24

        def string(at: int) -> tuple[str, int]:
            n = struct.unpack_from(end + "Q", mm, at)[0]
            return mm[at + 8 : at + 8 + n].decode("utf-8", "replace"), at + 8 + n

        def skip(kind: int, at: int) -> int:
            if kind == _GGUF_STRING:
                return at + 8 + struct.unpack_from(end + "Q", mm, at)[0]
            if kind == _GGUF_ARRAY:
                inner, count = struct.unpack_from(end + "IQ", mm, at)
                at += 12
                if inner in _GGUF_FORMATS:
                    return at + count * struct.calcsize(_GGUF_FORMATS[inner])
                for _ in range(count):
                    at = skip(inner, at)
                return at
            return at + struct.calcsize(_GGUF_FORMATS[kind])

        for _ in range(n_kv):
            if not wanted - out.keys():
                break
            key, pos = string(pos)
            kind = struct.unpack_from(end + "I", mm, pos)[0]
            pos += 4
            if key in wanted and kind in _GGUF_FORMATS:
                out[key] = struct.unpack_from(end + _GGUF_FORMATS[kind], mm, pos)[0]
            elif key in wanted and kind == _GGUF_STRING:
                out[key] = string(pos)[0]
            if kind not in _GGUF_FORMATS and kind not in (_GGUF_STRING, _GGUF_ARRAY):
                raise ValueError(f"{path}: metadata {key!r} has unknown value type {kind}")
            pos = skip(kind, pos)
    return out


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
