"""Build a Backend from an AGENTS.yaml agent entry.

    planner:  {backend: local, model: qwen2.5-coder-0.5b-instruct, adapter: runs/sft/planner}
    val-sel:  {backend: local, model: qwen2.5-coder-0.5b-instruct, adapter: runs/orpo/val-sel}
    fixer:    {backend: openai, base_url: http://node1:8000/v1, model: fixer-3b, concurrency: 64}
    planner:  {backend: vllm, model: qwen2.5-coder-0.5b-instruct, gpu_memory_utilization: 0.8}

Local agents that name the same base model (and device/dtype) share one loaded model: each gets
a ``LocalBackend`` view with its own adapter and stats, so five agents on a 0.5B base cost one
copy of the weights. vLLM agents likewise share one engine per base model in a process; a team
on two base models (the paper's split: 1.5B planner and selector, 0.5B validators and fixer)
gets two engines, which divide the process's vLLM memory by their ``memory_weight``. Keys other
than the backend's are ignored (the entry also carries the agent's own settings); the backend's
keys are type-checked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matsql.backends.base import Backend
from matsql.backends.vllm_local import EngineSettings, LoraMode

_ENGINE = EngineSettings()  # the defaults of an engine's settings


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LocalConfig(_Cfg):
    backend: Literal["local"] = "local"
    model: str
    adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64
    max_batch_tokens: int | None = None
    top_p: float = 1.0


class OpenAIConfig(_Cfg):
    backend: Literal["openai"]
    model: str
    base_url: str
    api_key: str | None = None
    api_key_env: str | None = None  # name of an environment variable holding the key
    concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 0.5
    mode: Literal["chat", "completions"] = "chat"
    tokenizer: str | None = None  # model spec, for mode=completions
    top_p: float | None = None
    extra_body: dict[str, Any] | None = None
    # A LoRA adapter goes to the server's LoRA module of that path (never silently to `model`):
    # lora_modules mirrors `vllm serve --lora-modules NAME=PATH` as {NAME: PATH}; see openai_http.
    adapter: str | None = None
    lora_modules: dict[str, str] | None = None
    # load an adapter no lora_modules entry names at run time (POST /v1/load_lora_adapter; the
    # server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): one served engine for a plan
    load_adapters: bool = False


class EchoConfig(_Cfg):
    backend: Literal["echo"]
    replies: list[str] | None = Field(default=None, min_length=1)  # canned texts (backends/echo.py)


class VLLMConfig(_Cfg):
    """An agent on the in-process vLLM engine; the engine's settings default to
    :class:`~matsql.backends.vllm_local.EngineSettings`' (their one home)."""

    backend: Literal["vllm"]
    model: str
    adapter: str | None = None
    top_p: float = 1.0
    dtype: str = _ENGINE.dtype
    gpu_memory_utilization: float = _ENGINE.gpu_memory_utilization
    max_model_len: int = _ENGINE.max_model_len
    enable_prefix_caching: bool = _ENGINE.enable_prefix_caching
    max_num_seqs: int = _ENGINE.max_num_seqs
    max_num_batched_tokens: int | None = _ENGINE.max_num_batched_tokens
    max_cudagraph_capture_size: int | None = _ENGINE.max_cudagraph_capture_size
    enforce_eager: bool | None = _ENGINE.enforce_eager
    max_loras: int | None = _ENGINE.max_loras
    max_lora_rank: int | None = _ENGINE.max_lora_rank
    # this model's part of the process's vLLM memory beside engines of other base models
    memory_weight: float = Field(default=_ENGINE.memory_weight, gt=0)
    # request: a LoRARequest per call (vLLM's LoRA kernels, eager); swap: the adapter merged into
    # the weights before a call that needs it (CUDA graphs, base-model speed); see vllm_local
    lora_mode: LoraMode = _ENGINE.lora_mode


_engines: dict[tuple[str, str, str], Any] = {}
_engines_lock = threading.Lock()


def shared_engine(model: str, device: str = "auto", dtype: str = "auto") -> Any:
    """The process-wide ``LocalEngine`` for (resolved model, device, dtype), loaded once."""
    from matsql.backends.transformers_local import LocalEngine
    from matsql.models import resolve_device, resolve_dtype, resolve_model

    resolved = resolve_model(model)
    dev = resolve_device(device)
    key = (str(resolved.path), dev, str(resolve_dtype(dtype, dev)))
    with _engines_lock:
        if key not in _engines:
            _engines[key] = LocalEngine.load(resolved, device=dev, dtype=dtype)
        return _engines[key]


_vllm_engines: dict[str, Any] = {}


def shared_vllm_engine(c: VLLMConfig) -> Any:
    """The process-wide vLLM engine for a base model: one per model, shared by its agents.

    Agents that name the same model share it; they must agree on the engine settings, since
    one engine starts with one set (a mismatch is an error, not a silent pick). Engines of
    different models in one process split its vLLM memory (:func:`_split_vllm_memory`), which
    is known only while none has started: a model's first agent made after an engine started is
    refused, since that engine already took the whole share."""
    from matsql.backends.vllm_local import EngineSettings, VLLMEngine
    from matsql.models import dense_folder, load_tokenizer, resolve_model

    settings = EngineSettings(
        **{k: getattr(c, k) for k in EngineSettings.__dataclass_fields__}  # type: ignore[attr-defined]
    )
    resolved = resolve_model(c.model)
    with _engines_lock:
        key = str(resolved.path)
        eng = _vllm_engines.get(key)
        if eng is None:
            started = [str(e.model_dir) for e in _vllm_engines.values() if e.started]
            if started:
                raise RuntimeError(
                    f"a vLLM engine for {c.model} is asked for after the engine on {started[0]} started "
                    "with its part of this process's GPU memory; make every agent's backend before the "
                    "first generation, so that the engines divide the memory between them"
                )
            folder, digest = dense_folder(resolved, dtype=c.dtype)
            ident = f"{resolved.identifier}|{c.dtype}:{digest[:16]}"
            eng = VLLMEngine(folder, load_tokenizer(folder), ident, settings)
            _vllm_engines[key] = eng
            _split_vllm_memory()
        elif eng.settings != settings:
            raise ValueError(
                f"agents on {c.model} ask for different vLLM engine settings ({eng.settings} vs {settings}); "
                "one process runs one engine: put the engine settings under `defaults:`"
            )
        return eng


def vllm_swap_notes() -> list[str]:
    """One line per vLLM engine of this process that swapped adapters into its weights
    (``lora_mode: swap``): how many loads and their seconds, so a stage's log shows what
    changing adapters cost it."""
    return [
        f"{Path(e.model_dir).name}: {e.swaps} adapter swap(s) into the weights in {e.swap_seconds:.1f} s"
        for e in _vllm_engines.values()
        if e.swaps
    ]


def _split_vllm_memory() -> None:
    """Give each vLLM engine of this process its ``memory_weight``'s part of the process's vLLM
    memory (``VLLMEngine.process_fraction``): each then starts with ``gpu_memory_utilization`` x
    that part (x the process's card share, ``matsql.gpu``), so the engines together take what
    the agents file gives one engine alone. vLLM sizes its KV cache at start-up to fill what it
    was given; two engines each given the whole share would not both start."""
    total = sum(e.settings.memory_weight for e in _vllm_engines.values())
    for e in _vllm_engines.values():
        e.process_fraction = e.settings.memory_weight / total


def begin_stage() -> list[str]:
    """Ready this process's kept engines for a new stage (``experiment run --warm`` runs stage
    after stage in one process; :meth:`VLLMEngine.begin_stage` says what is reset) and name
    them, one line each, for the stage's log."""
    with _engines_lock:
        kept = [f"transformers model {path} on {device} ({dtype})" for path, device, dtype in _engines]
        for e in _vllm_engines.values():
            e.begin_stage()
            kept.append(f"vLLM engine on {e.model_dir} ({'started' if e.started else 'not started'})")
    return kept


def clear_engines() -> None:
    """Forget shared engines (frees their memory once no backend holds them)."""
    with _engines_lock:
        _engines.clear()
        _vllm_engines.clear()


def make_backend(cfg: Mapping[str, Any], *, agent: str | None = None) -> Backend:
    """A Backend for one agent entry: ``backend: local | vllm | openai | echo`` (default local)."""
    where = f"agent {agent!r}" if agent else "backend config"
    kind = cfg.get("backend", "local")
    try:
        if kind == "local":
            c = LocalConfig.model_validate(dict(cfg))
            from matsql.backends.transformers_local import LocalBackend

            return LocalBackend(
                shared_engine(c.model, c.device, c.dtype),
                adapter=c.adapter,
                batch_size=c.batch_size,
                max_batch_tokens=c.max_batch_tokens,
                top_p=c.top_p,
            )
        if kind == "openai":
            o = OpenAIConfig.model_validate(dict(cfg))
            api_key = o.api_key
            if api_key is None and o.api_key_env:
                api_key = os.environ.get(o.api_key_env)
                if api_key is None:
                    raise ValueError(
                        f"{where}: environment variable {o.api_key_env} (api_key_env) is not set"
                    )
            from matsql.backends.openai_http import OpenAIBackend

            return OpenAIBackend(
                o.base_url,
                o.model,
                api_key,
                concurrency=o.concurrency,
                timeout_s=o.timeout_s,
                max_retries=o.max_retries,
                backoff_s=o.backoff_s,
                mode=o.mode,
                tokenizer=o.tokenizer,
                top_p=o.top_p,
                extra_body=o.extra_body,
                adapter=o.adapter,
                lora_modules=o.lora_modules,
                load_adapters=o.load_adapters,
            )
        if kind == "vllm":
            v = VLLMConfig.model_validate(dict(cfg))
            from matsql.backends.vllm_local import VLLMBackend

            return VLLMBackend(shared_vllm_engine(v), adapter=v.adapter, top_p=v.top_p)
        if kind == "echo":
            e = EchoConfig.model_validate(dict(cfg))
            from matsql.backends.echo import EchoBackend

            return EchoBackend(replies=e.replies)
    except ValidationError as e:
        raise ValueError(f"{where}: bad {kind} backend settings: {e}") from e
    raise ValueError(f"{where}: unknown backend {kind!r}; expected local, vllm, openai or echo")
