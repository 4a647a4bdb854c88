"""In-process generation with vLLM's offline engine (``vllm.LLM``) on a GPU.

Why vLLM: on the lent H100 the transformers path decodes at plain-``generate`` speed, ~1% of
what the card can do, while vLLM's continuous batching and paged attention waste no steps on
finished rows, and its prefix cache computes the schema prompt once for the K planner samples
and both validators (``../shared/docs/VLLM.md`` measured 41k vs 8.6k new tokens/s).

How a call runs: prompts are rendered with the model's own chat template by the same code as
the transformers backend (``render_chat`` + prefix) and sent as token ids, so both backends feed
the model identical tokens. ``n`` samples of a prompt are one request with ``n=n`` and one seed,
``derive_seed(seed, prompt)``: vLLM gives sample ``i`` the seed ``seed + i``, so a completion is
a function of prompt, settings, seed and sample index, not of what else is in the batch (up to
bf16 rounding in batched kernels). Greedy calls ask once and repeat the text ``n`` times.
Completion ids are decoded here and cut at the first end-of-turn id and stop string, exactly as
the transformers backend does. Sampling is defined by the call's arguments alone: the engine
starts with ``generation_config="vllm"``, so the checkpoint's defaults (Qwen's top_k=20,
repetition_penalty=1.05) are not mixed in.

One engine per base model in a process serves every agent on that model: each agent is a
``VLLMBackend`` view with its own LoRA adapter, sent per request (``LoRARequest``). The engine
starts on the first call, when every agent has registered its adapter, so LoRA support, the
largest rank and the number of adapters are known; an adapter registered after the start must
fit what it started with. A team on two base models (the paper's 1.5B planner and selector, 0.5B
validators and fixer) runs two engines in one process (vLLM 0.26 accepts a second in-process
engine of the same tensor-parallel size); they split the process's memory by weight
(``process_fraction``, set by ``matsql.backends.registry``). An engine on a shared card gets
its KV cache sized up front (``shared_kv_bytes``), so engines sharing a card start at once;
without that (``MATSQL_VLLM_SHARED_KV=profile``) they start one at a time.

Measured on the lent H100 (``results/vllm/README.md``), and why two settings are defaults:
- Seeded samples repeat exactly from run to run only with the engine core in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set unless the environment says otherwise); with the
  default engine process, two runs with the same seed differed. Within one process a second
  identical call can still differ (likely the prefix cache: cached blocks change bf16 rounding
  in prefill; not isolated). A rollout asks each prompt once, so its records repeat.
- Every sampled request carries a seed, and vLLM samples seeded requests with its PyTorch path,
  never FlashInfer's top-p/top-k kernels (``TopKTopPSampler.forward_cuda``); but its warmup
  (``_dummy_sampler_run``) runs them once, unseeded, and FlashInfer JIT-compiles them on a bare
  machine. The first engine of session 14's lease took 99.7 s to start, 79 s of it after the
  CUDA graphs, where that warmup runs (located from vLLM's source, not profiled); later engines
  took 9.8 s. ``VLLM_USE_FLASHINFER_SAMPLER=0``
  (set unless the environment says otherwise) leaves FlashInfer's sampler out and changes no
  sampled token.
- With LoRA enabled and CUDA graphs captured, engine start hung for over 7 minutes (vLLM
  0.26.0, V2 model runner); in eager mode it started in seconds. ``enforce_eager=None`` (the
  default) therefore runs eagerly exactly when adapters are registered.

LoRA two ways (``lora_mode``). ``request`` (the default): vLLM's LoRA kernels, an adapter per
request, several adapters in one batch; eager, per the hang above, which costs the engine 0.68x
its base rate (session 8). ``swap``: no LoRA in the engine, which keeps CUDA graphs; before a call
whose adapter differs from the one loaded, the engine loads the base weights with that adapter
merged in (``W + scale * B @ A`` for each targeted Linear, :func:`merged_weights`) through
``model.load_weights`` and clears the prefix cache, so a call runs at the base model's speed.
Calls hold the engine's lock, so agents on one engine take turns; a swap loads ~1 GB for the
0.5B model's seven projections. Merged bf16 weights round differently from LoRA computed on the
side, so the two modes' tokens can part the way two kernels' do.

Models load from a dense safetensors folder (``matsql.models.dense_folder``): a GGUF is
dequantized once per machine and cached, so later stages load in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from matsql.backends.base import GenerationStats
from matsql.backends.chat import (
    RenderedTextBackend,
    check_sampling,
    cut_at_stop_ids,
    derive_seed,
    encode_checked,
    stop_token_ids,
    truncate_at_stop,
)

log = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM 0.26 accepts as max_lora_rank
LoraMode = Literal["request", "swap"]  # request: LoRARequest per call; swap: merged weights (module doc)
LORA_MODES: tuple[str, ...] = get_args(LoraMode)
SEED_BITS = 62  # vLLM seeds sample i with seed + i: keep the sum inside a signed 64-bit int


@dataclass(frozen=True)
class EngineSettings:
    """What the engine is started with; agents sharing one engine must agree on it."""

    gpu_memory_utilization: float = 0.85
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    # 2,048: 1.49x the kept tokens/s of 512 on a rollout call's workload (session 11, H100), though
    # vLLM captures CUDA graphs only up to 512 sequences; its own H100 default is 1,024
    max_num_seqs: int = 2048
    max_num_batched_tokens: int | None = None
    # vLLM captures CUDA graphs for batches up to min(2 x max_num_seqs, 512) sequences; larger
    # decode batches run without them. Set to capture up to this many (longer engine start)
    max_cudagraph_capture_size: int | None = None
    enforce_eager: bool | None = None  # None: eager only when LoRA is on (see module doc)
    dtype: str = "bfloat16"
    max_loras: int | None = None  # default: the number of registered adapters
    max_lora_rank: int | None = None  # default: the smallest accepted rank >= every adapter's
    memory_weight: float = 1.0  # part of the process's vLLM memory beside other models' engines
    lora_mode: LoraMode = "request"

    def __post_init__(self) -> None:
        if self.lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode {self.lora_mode!r}: expected one of {', '.join(LORA_MODES)}")


@dataclass(frozen=True)
class Adapter:
    name: str
    int_id: int
    path: str
    rank: int


# What a shared-card engine keeps beside its KV cache and weights when its KV size is fixed up
# front: session 13's 0.5B engine at 16,384 tokens a step used 0.65 GiB of activations, 0.23 of
# non-torch memory and 0.39 of CUDA graphs (1.27 GiB); a quarter of the weights on top covers
# larger models' activations
NON_KV_RESERVE_BYTES = 3 * 2**30
SHARED_KV_ENV = "MATSQL_VLLM_SHARED_KV"  # "profile": size the KV cache by profiling, under the lock


def shared_kv_bytes(card_bytes: int, utilization: float, weights_bytes: int) -> int:
    """The KV cache of an engine that takes ``utilization`` of a card of ``card_bytes`` beside
    other engines or a training stage: its part of the card less its weights and a reserve for
    activations, CUDA graphs and non-torch memory. Fixed up front, vLLM skips memory profiling,
    which would charge this engine with whatever its neighbours allocate meanwhile; so engines
    sharing a card need not start one at a time. Pure."""
    kv = int(card_bytes * utilization) - weights_bytes - NON_KV_RESERVE_BYTES - weights_bytes // 4
    if kv <= 0:
        raise ValueError(
            f"no room for a KV cache: {utilization:.3f} of a {card_bytes / 2**30:.1f} GiB card holds "
            f"{weights_bytes / 2**30:.2f} GiB of weights and a {NON_KV_RESERVE_BYTES / 2**30:.0f} GiB "
            "reserve; give this stage more of the card (fewer --gpu-slots)"
        )
    return kv


def _card_bytes() -> int | None:
    """Total memory of this process's card, or None without CUDA."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def _weights_bytes(model_dir: Path) -> int:
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))


@contextmanager
def start_lock(share: float | None) -> Iterator[None]:
    """Hold the card's start-up lock while this process starts an engine on a shared card (a
    memory ``share`` below 1) whose KV cache vLLM sizes by profiling (no CUDA to read the card's
    size, or ``MATSQL_VLLM_SHARED_KV=profile``; otherwise :func:`shared_kv_bytes` fixes it and
    no lock is needed): engines sharing a card start one at a time. vLLM counts as its own
    non-KV memory everything the card gained from its creation to the end of its profiling
    minus its own torch memory (``vllm.utils.mem_utils.memory_profiling``), so another engine
    allocating its KV cache meanwhile would be charged to this one and shrink, or exhaust, its
    cache. A process alone on the card with one engine takes no lock (two engines of one
    process share it, so they take it too). A training stage beside it still
    allocates as it goes; that is not serialised."""
    if share is None or share >= 1:
        yield
        return
    import fcntl
    import tempfile

    card = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "_") or "all"
    path = Path(tempfile.gettempdir()) / f"matsql-vllm-start-{card}.lock"
    with path.open("a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if the start fails
        waited = time.perf_counter() - t0
        if waited > 1:
            log.info("waited %.0f s for another vLLM engine on this card to start", waited)
        yield


def adapter_rank(path: str | os.PathLike[str]) -> int:
    """The LoRA rank a PEFT adapter folder declares (``adapter_config.json``)."""
    cfg = Path(path) / "adapter_config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{cfg}: not a PEFT adapter folder (no adapter_config.json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: line {e.lineno}: not valid JSON ({e.msg})") from None
    r = data.get("r")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"{cfg}: expected a positive integer 'r' (the LoRA rank), got {r!r}")
    if data.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg}: peft_type {data.get('peft_type')!r}; vLLM serves only LORA adapters")
    return r


def _lora_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    cfg = Path(path) / "adapter_config.json"
    data = json.loads(cfg.read_text(encoding="utf-8"))
    for key, bad in (("use_dora", True), ("fan_in_fan_out", True)):
        if data.get(key) == bad:
            raise ValueError(
                f"{cfg}: {key}: true cannot be merged by lora_mode: swap; use lora_mode: request"
            )
    if data.get("modules_to_save"):
        raise ValueError(
            f"{cfg}: modules_to_save {data['modules_to_save']} cannot be swapped in; use lora_mode: request"
        )
    return data


def lora_targets(path: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Base weight name -> (its lora_A key, its lora_B key) in a PEFT adapter's safetensors."""
    from safetensors import safe_open

    f = Path(path) / "adapter_model.safetensors"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: lora_mode: swap reads the adapter's safetensors weights")
    with safe_open(str(f), framework="pt") as st:
        keys = list(st.keys())
    out = {}
    for key in keys:
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            b = f"{module}.lora_B.weight"
            if b not in keys:
                raise ValueError(f"{f}: {key} has no {b}")
            out[module.removeprefix("base_model.model.") + ".weight"] = (key, b)
    if not out:
        raise ValueError(f"{f}: no LoRA weights (keys ending in .lora_A.weight)")
    return out


def merged_weights(base: dict[str, Any], adapter: str | os.PathLike[str]) -> dict[str, Any]:
    """The base weights an adapter targets, with it merged in: ``W + scale * B @ A`` computed in
    float32 and cast back to each weight's dtype and device (pure: ``base`` is not changed).
    ``scale`` is ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``), as PEFT merges it."""
    import math

    import torch
    from safetensors import safe_open

    cfg = _lora_config(adapter)
    r = int(cfg["r"])
    scale = float(cfg.get("lora_alpha", r)) / (math.sqrt(r) if cfg.get("use_rslora") else r)
    targets = lora_targets(adapter)
    out = {}
    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), framework="pt") as st:
        for name, (ka, kb) in targets.items():
            if name not in base:
                raise KeyError(f"{adapter}: {ka} targets {name}, which the base model does not have")
            w = base[name]
            a = st.get_tensor(ka).to(w.device, dtype=torch.float32)
            b = st.get_tensor(kb).to(w.device, dtype=torch.float32)
            out[name] = (w.to(torch.float32) + scale * (b @ a)).to(w.dtype)
    return out


def read_weights(model_dir: str | os.PathLike[str], names: set[str], device: str) -> dict[str, Any]:
    """The named tensors of a dense safetensors folder, on ``device``."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt", device=device) as st:
            for key in set(st.keys()) & (names - out.keys()):
                out[key] = st.get_tensor(key)
    missing = names - out.keys()
    if missing:
        raise KeyError(f"{model_dir}: no weights {sorted(missing)[:3]} (named by an adapter)")
    return out


def lora_capacity(ranks: Sequence[int], settings: EngineSettings) -> tuple[int, int]:
    """``(max_lora_rank, max_loras)`` an engine needs for adapters of ``ranks``."""
    need = max(ranks, default=1)
    rank = settings.max_lora_rank or next((r for r in LORA_RANKS if r >= need), need)
    if rank < need:
        raise ValueError(f"max_lora_rank={rank} is below an adapter's rank {need}")
    return rank, settings.max_loras or max(1, len(ranks))


#: Environment the engine starts with, unless already set (module docstring): the engine core in
#: this process, so scheduling and seeded samples repeat run to run; no FlashInfer sampler, which
#: seeded requests never use and whose warmup compiles on a bare machine.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}


def engine_env(dtype: str) -> dict[str, str]:
    """``ENGINE_ENV``, and for a float32 engine exact float32 products in Triton's kernels. vLLM
    runs float32 attention on its Triton backend (FlashAttention and FlashInfer take 16-bit
    inputs), whose ``tl.dot`` rounds float32 inputs to TF32 unless ``TRITON_F32_DEFAULT=ieee``:
    the 5.5% of float32 greedy completions that parted from the transformers backend in session 8
    (results/vllm/README.md, session 19). vLLM's matmuls already run at "highest" precision."""
    exact = {"TRITON_F32_DEFAULT": "ieee"} if dtype in ("float32", "float") else {}
    return ENGINE_ENV | exact


def build_requests(
    token_ids: Sequence[Sequence[int]],
    texts: Sequence[str],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    stop: Sequence[str] | None,
    seed: int,
    stop_ids: Sequence[int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prompts and sampling settings for ``LLM.generate``, as plain dicts (pure; unit-tested).

    Each prompt is one request: greedy asks one completion (repeated ``n`` times by the
    caller), sampling asks ``n`` with the seed ``derive_seed(seed, text)``. The engine
    detokenizes only when stop strings need it: the caller decodes the kept ids itself, and
    vLLM's incremental detokenizer costs a tokenizer call per new token of every running
    sequence on the engine's own thread (in process, it stalls the GPU).
    """
    greedy = temperature <= 0
    prompts = [{"prompt_token_ids": list(ids)} for ids in token_ids]
    params = []
    for text in texts:
        p: dict[str, Any] = {
            "n": 1 if greedy else n,
            "temperature": 0.0 if greedy else float(temperature),
            "top_p": 1.0 if greedy else float(top_p),
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "max_tokens": int(max_tokens),
            "stop": list(stop or []) or None,
            "stop_token_ids": list(stop_ids),
            "detokenize": bool(stop),
            "skip_special_tokens": True,
        }
        if not greedy:
            p["seed"] = derive_seed(seed, text, 0, bits=SEED_BITS)
        params.append(p)
    return prompts, params


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``; None elsewhere): where a stage's
    time goes before its engine starts."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


#: ``VLLMEngine._loaded`` after :meth:`VLLMEngine.begin_stage`: no adapter path equals it, so the
#: next call swaps in its adapter, or the base weights, whatever an earlier stage left merged in.
_UNKNOWN = "\0unknown"


class OfflineLLM:
    """``vllm.LLM`` taking the plain requests this module builds: the one place that imports
    vLLM, so the engine logic above it runs (and is tested) without vLLM installed."""

    def __init__(self, **kw: Any) -> None:
        t0 = time.perf_counter()
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError(
                f"the vllm backend needs vLLM on a CUDA machine ({e}); install it with "
                "`pip install vllm==0.26.0` (on the lent GPU: scripts/device/setup.sh join)"
            ) from None
        self.import_s = time.perf_counter() - t0
        self.llm = LLM(**kw)

    def generate(
        self,
        prompts: list[dict[str, Any]],
        params: list[dict[str, Any]],
        use_tqdm: bool,
        lora_request: Adapter | None,
    ) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        req = (
            None
            if lora_request is None
            else LoRARequest(lora_request.name, lora_request.int_id, lora_request.path)
        )
        return self.llm.generate(
            [TokensPrompt(**p) for p in prompts],  # type: ignore[typeddict-item]
            [SamplingParams(**p) for p in params],
            use_tqdm=use_tqdm,
            lora_request=req,
        )

    def load_weights(self, weights: list[tuple[str, Any]]) -> None:
        """Copy HF-named weights into the running model (in place: CUDA graphs stay valid)."""
        self.llm.apply_model(lambda model: model.load_weights(weights))

    def reset_prefix_cache(self) -> None:
        self.llm.reset_prefix_cache()


@dataclass
class VLLMEngine:
    """One ``vllm.LLM`` over a dense model folder, shared by the agents of a team."""

    model_dir: Path
    tokenizer: Any
    identifier: str
    settings: EngineSettings = field(default_factory=EngineSettings)
    llm_factory: Callable[..., Any] = OfflineLLM  # tests pass a fake taking the same requests
    adapters: dict[str, Adapter] = field(default_factory=dict)  # path -> adapter
    _llm: Any = None
    _lora: tuple[int, int] | None = None  # (max rank, max loras) the engine started with
    # this engine's part of the process's vLLM memory where the process runs engines for several
    # base models (the registry sets it from their memory_weight); 1: the engine is alone
    process_fraction: float = 1.0
    _base: dict[str, Any] = field(default_factory=dict)  # swap mode: base weights adapters target
    _targets: set[str] = field(default_factory=set)  # swap mode: the weights any registered adapter targets
    _loaded: str | None = None  # swap mode: the adapter merged into the engine's weights (None: base)
    swaps: int = 0  # swap mode: weight loads so far, and the seconds they took (benchmarks report them)
    swap_seconds: float = 0.0
    _ids: int = 0  # LoRA ids handed out so far: an adapter registered again (a new stage) gets a new one

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.stop_ids = stop_token_ids(self.tokenizer, self._generation_eos())

    def _generation_eos(self) -> list[int]:
        path = Path(self.model_dir) / "generation_config.json"
        try:
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, json.JSONDecodeError):
            return []
        return eos if isinstance(eos, list) else ([eos] if eos is not None else [])

    def add_adapter(self, path: str | os.PathLike[str]) -> Adapter:
        """Register a PEFT LoRA folder (idempotent); its requests carry a ``LoRARequest``."""
        p = str(Path(path).expanduser().resolve())
        with self.lock:
            if p in self.adapters:
                return self.adapters[p]
            rank = adapter_rank(p)
            if self.settings.lora_mode == "swap":  # read once; fails now, not at the first call
                self._targets |= lora_targets(p).keys()
            elif self._llm is not None:
                max_rank, max_loras = self._lora or (0, 0)
                if rank > max_rank or len(self.adapters) + 1 > max_loras:
                    raise RuntimeError(
                        f"adapter {p} (rank {rank}) registered after the vLLM engine started with "
                        f"max_lora_rank={max_rank}, max_loras={max_loras}; set max_lora_rank/max_loras "
                        "in the agents file, or name every adapter before the first generation"
                    )
            self._ids += 1
            ad = Adapter(name=f"{Path(p).name}-{self._ids}", int_id=self._ids, path=p, rank=rank)
            self.adapters[p] = ad
            return ad

    def engine_kwargs(
        self, memory_share: float | None = None, card_bytes: int | None = None, weights_bytes: int = 0
    ) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM`` for the current settings and adapters (pure). With
        ``memory_share`` (this process's share of its card, ``matsql.gpu``) the engine takes that
        share of ``gpu_memory_utilization`` (:func:`matsql.gpu.vllm_memory_utilization`), and
        with the card's size too, a KV cache fixed up front (:func:`shared_kv_bytes`)."""
        from matsql.gpu import vllm_memory_utilization

        s = self.settings
        kw: dict[str, Any] = {
            "model": str(self.model_dir),
            "tokenizer": str(self.model_dir),
            "dtype": s.dtype,
            "seed": 0,
            "enable_prefix_caching": s.enable_prefix_caching,
            "gpu_memory_utilization": vllm_memory_utilization(s.gpu_memory_utilization, memory_share),
            "max_model_len": s.max_model_len,
            "max_num_seqs": s.max_num_seqs,
            "enforce_eager": bool(s.enforce_eager)
            if s.enforce_eager is not None
            else bool(self.adapters) and s.lora_mode == "request",
            "generation_config": "vllm",
        }
        if s.max_num_batched_tokens:
            kw["max_num_batched_tokens"] = s.max_num_batched_tokens
        if s.max_cudagraph_capture_size:
            kw["compilation_config"] = {"max_cudagraph_capture_size": s.max_cudagraph_capture_size}
        if memory_share is not None and card_bytes:
            kw["kv_cache_memory_bytes"] = shared_kv_bytes(
                card_bytes, kw["gpu_memory_utilization"], weights_bytes
            )
        if self.adapters and s.lora_mode == "request":
            rank, loras = lora_capacity([a.rank for a in self.adapters.values()], s)
            kw |= {"enable_lora": True, "max_lora_rank": rank, "max_loras": loras}
        return kw

    @property
    def started(self) -> bool:
        """Whether ``vllm.LLM`` has started (its memory is then fixed)."""
        return self._llm is not None

    def memory_share(self) -> float | None:
        """This engine's share of its card: the process's share (``matsql.gpu.memory_share``, a
        card shared with other stages under ``experiment run --gpu-slots``) x its part of the
        process (``process_fraction``); None for the whole card."""
        from matsql.gpu import memory_share

        card = memory_share()
        share = (1.0 if card is None else card) * self.process_fraction
        return None if share >= 1 else share

    @property
    def llm(self) -> Any:
        with self.lock:
            if self._llm is None:
                share = self.memory_share()
                card = _card_bytes() if os.environ.get(SHARED_KV_ENV) != "profile" else None
                kw = self.engine_kwargs(share, card, _weights_bytes(self.model_dir) if card else 0)
                if kw["gpu_memory_utilization"] != self.settings.gpu_memory_utilization:
                    log.info(
                        "vLLM takes %.4f of the card: gpu_memory_utilization %.2f x this engine's share "
                        "(this process's share of the card x the engine's part of the process: %.3f)",
                        kw["gpu_memory_utilization"],
                        self.settings.gpu_memory_utilization,
                        self.process_fraction,
                    )
                for name, value in engine_env(self.settings.dtype).items():
                    os.environ.setdefault(name, value)
                t0 = time.perf_counter()
                # a KV cache fixed up front needs no profiling, so no turn at the card
                with start_lock(None if "kv_cache_memory_bytes" in kw else share):
                    self._llm = self.llm_factory(**kw)
                if kw.get("enable_lora"):
                    self._lora = (kw["max_lora_rank"], kw["max_loras"])
                took, age = time.perf_counter() - t0, process_age()
                log.info(
                    "vLLM engine on %s started in %.1f s (importing vLLM %.1f s); the process was %s s "
                    "old when it began (imports, questions, tokenizer: a stage's fixed cost)",
                    self.model_dir,
                    took,
                    getattr(self._llm, "import_s", 0.0),
                    "?" if age is None else f"{age - took:.1f}",
                )
            return self._llm

    def begin_stage(self) -> None:
        """Make a kept engine (``experiment run --warm``: one process runs stage after stage)
        behave as a new one would at a stage's start. The prefix cache is emptied, so no block
        computed in an earlier stage changes this stage's rounding. Adapters are forgotten, since
        a folder may have been rewritten since (an ORPO stage run again writes the same path):
        swap mode merges the first call's adapter in afresh; request mode registers each adapter
        again under a new LoRA id, so vLLM loads it from disk and not from its cache of the old
        id. The swap counters restart, so the stage's log reports its own swaps."""
        with self.lock:
            self.swaps, self.swap_seconds = 0, 0.0
            if self._llm is None:
                return
            self._llm.reset_prefix_cache()
            if self.settings.lora_mode == "swap":
                if self._targets:  # an adapter may be merged in: the first call writes every target
                    self._loaded = _UNKNOWN
            else:
                self.adapters.clear()

    def _swap_in(self, llm: Any, adapter: Adapter | None) -> None:
        """Swap mode: make the engine's weights the base model's with ``adapter`` merged in (with
        none: the base model's), unless they are already. Every targeted weight of every
        registered adapter is written, so nothing of an earlier adapter stays behind."""
        want = adapter.path if adapter else None
        if want == self._loaded:
            return
        import torch

        t0 = time.perf_counter()
        names = self._targets
        device = "cuda:0" if torch.cuda.is_available() else "cpu"  # the in-process engine's card
        if names - self._base.keys():
            self._base |= read_weights(self.model_dir, names - self._base.keys(), device)
        weights = {n: self._base[n] for n in names}
        if adapter is not None:
            weights |= merged_weights(weights, adapter.path)
        llm.load_weights(list(weights.items()))
        llm.reset_prefix_cache()  # cached blocks were computed with the other weights
        self._loaded = want
        took = time.perf_counter() - t0
        self.swaps += 1
        self.swap_seconds += took
        log.info("swapped in %s (%d weights) in %.2f s", want or "the base model", len(weights), took)

    def generate_texts(
        self,
        texts: Sequence[str],
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        stop: Sequence[str] | None,
        seed: int,
        top_p: float = 1.0,
        adapter: Adapter | None = None,
        stats: GenerationStats | None = None,
    ) -> list[list[str]]:
        """``n`` completions for each rendered prompt text (see module doc)."""
        check_sampling(n, max_tokens, temperature, top_p)
        if not texts:
            return []
        t0 = time.perf_counter()
        limit = self.settings.max_model_len
        enc = encode_checked(self.tokenizer, texts, max_tokens, limit, f"engine's max_model_len={limit}")
        prompts, params = build_requests(
            enc,
            texts,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            stop_ids=self.stop_ids,
        )
        llm = self.llm
        with self.lock:
            if self.settings.lora_mode == "swap":
                self._swap_in(llm, adapter)
                adapter = None
            outs = llm.generate(prompts, params, use_tqdm=False, lora_request=adapter)
        greedy = temperature <= 0
        result: list[list[str]] = []
        made = 0
        for out in outs:
            texts_out = []
            for comp in out.outputs:
                kept, ended = cut_at_stop_ids(list(comp.token_ids), self.stop_ids)
                made += len(kept) + int(ended)
                texts_out.append(
                    truncate_at_stop(self.tokenizer.decode(kept, skip_special_tokens=True), stop)
                )
            result.append(texts_out * n if greedy else texts_out)
        if stats is not None:
            stats.record(
                prompts=len(enc),
                n=n,
                prompt_tokens=sum(len(e) for e in enc),
                completion_tokens=made,
                seconds=time.perf_counter() - t0,
                extra={"requests": len(enc) * (1 if greedy else n)},
            )
        return result


class VLLMBackend(RenderedTextBackend):
    """The Backend protocol over a shared ``VLLMEngine``, with this agent's adapter."""

    def __init__(
        self,
        engine: VLLMEngine,
        adapter: str | os.PathLike[str] | None = None,
        *,
        top_p: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.engine = engine
        self.adapter = engine.add_adapter(adapter) if adapter is not None else None
        self.top_p = top_p
        self.name = name or f"vllm:{engine.identifier}" + (f"+{self.adapter.path}" if self.adapter else "")
        self.stats = GenerationStats()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate_text(
        self,
        texts: list[str],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
    ) -> list[list[str]]:
        """Like ``generate`` for already rendered prompt texts (the completions API)."""
        return self.engine.generate_texts(
            texts,
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            top_p=self.top_p,
            adapter=self.adapter,
            stats=self.stats,
        )
