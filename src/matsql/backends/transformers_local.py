"""In-process generation with transformers, batched, with optional LoRA adapters: the CPU
engine (the embedded default on a laptop, the demo, tests).

How a call runs: prompts are rendered with the tokenizer's own chat template (+ prefix) and
tokenized without adding special tokens; each (prompt, sample) becomes a row; rows are sorted
by length and packed into batches (``batch_size`` rows, and at most ``max_batch_tokens`` of
rows x (longest input + new tokens)), so little compute goes to padding; each batch is
left-padded and decoded with ``model.generate`` (on a CPU into a preallocated KV cache sized
to the batch, see ``LocalEngine.kv_cache``).
Greedy calls (T=0) decode each prompt once and repeat the text ``n`` times.

Sampling is keyed per row (see ``sampling.py``): a completion is a function of the prompt,
the settings, ``seed`` and its sample index, not of which prompts shared its batch. ``seed``
and ``n`` therefore reproduce across batch sizes and resumed runs (on one machine; bf16
logits can differ in the last bit with different padding).

Several agents can share one loaded base model: a ``LocalEngine`` holds the model and its
LoRA adapters, and each ``LocalBackend`` is a view with its own default adapter and stats.

Adapters stay unmerged by default (PEFT; one copy of the weights in RAM).
``MATSQL_MERGE_ADAPTERS=1`` (or ``merge_adapters=True``) merges each adapter into its own copy
of the base weights, which saves LoRA's extra matmuls in every adapted linear at every decode
step: the demo sets it (SmolLM2-135M on a CPU, 16 planner samples of 64 tokens: 81 s merged
against 112 s unmerged). Merged and unmerged weights round differently, so a completion can
differ where two tokens nearly tie.

On a GPU the engine runs the same way, plainly: one ``generate`` per batch until its longest
row ends, no memory cap, and an out-of-memory error fails the call. GPU generation is the vllm
backend (``backend: vllm``); issue 15 deleted this engine's GPU-only machinery (decode rounds,
merged adapter copies by default, batch halving on OOM, the memory share, a grouped-query
decode kernel). It stays usable there as the reference that vLLM is compared against
(``benchmarks/bench_generate.py``, ``benchmarks/vllm_parity.py``) and for small jobs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.backends.chat import (
    RenderedTextBackend,
    check_sampling,
    cut_at_stop_ids,
    derive_seed,
    encode_checked,
    encode_rendered,
    render_chat,
    stop_token_ids,
    truncate_at_stop,
)

log = logging.getLogger(__name__)

BASE = "__base__"  # adapter name meaning "the base model, adapters off" (PEFT's own spelling)


@dataclass(frozen=True)
class Row:
    prompt: int  # index into the call's prompts
    sample: int  # sample index within the prompt
    length: int  # prompt tokens


def pack_rows(
    rows: Sequence[Row], batch_size: int, max_batch_tokens: int | None, max_tokens: int
) -> list[list[Row]]:
    """Sort rows longest-first and cut them into batches.

    A batch holds at most ``batch_size`` rows and, if set, at most ``max_batch_tokens`` of
    rows x (longest prompt + max_tokens), a proxy for its KV-cache size. Longest-first means a
    batch that does not fit in memory fails at once, not at the end of a long run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ordered = sorted(rows, key=lambda r: (-r.length, r.prompt, r.sample))
    batches: list[list[Row]] = []
    cur: list[Row] = []
    for r in ordered:
        width = (cur[0].length if cur else r.length) + max_tokens
        full = len(cur) >= batch_size or (
            max_batch_tokens is not None and (len(cur) + 1) * width > max_batch_tokens
        )
        if cur and full:
            batches.append(cur)
            cur = []
        cur.append(r)
    if cur:
        batches.append(cur)
    return batches


class LocalEngine:
    """One loaded model + tokenizer (+ named LoRA adapters), shared by backends; thread-safe."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        identifier: str = "model",
        merge_adapters: bool | None = None,
    ) -> None:
        self.model = model  # the base model; a PeftModel around it once unmerged adapters load
        self.tokenizer = tokenizer
        self.identifier = identifier
        self.adapters: dict[str, str] = {}  # name -> path
        self.merged: dict[str, Any] = {}  # name -> base weights with that adapter merged in
        self.merge_adapters = resolve_merge(merge_adapters)
        self.lock = threading.RLock()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra = gen_eos if isinstance(gen_eos, list) else ([gen_eos] if gen_eos is not None else [])
        self.stop_ids = stop_token_ids(tokenizer, extra)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def load(cls, spec: Any, *, device: str = "auto", dtype: Any = "auto") -> LocalEngine:
        from matsql.models import ResolvedModel, load_model_and_tokenizer, resolve_model

        r = spec if isinstance(spec, ResolvedModel) else resolve_model(spec)
        model, tok = load_model_and_tokenizer(r, dtype=dtype, device=device)
        return cls.for_inference(model, tok, identifier=r.identifier)

    @classmethod
    def for_inference(cls, model: Any, tokenizer: Any, *, identifier: str = "model") -> LocalEngine:
        """An engine over an already loaded model, set up as ``load`` does: on a GPU, cuDNN
        attention off, and a warning that this is the plain path (see module doc)."""
        device = next(model.parameters()).device
        if device.type == "cuda":
            from matsql.gpu import disable_cudnn_attention

            disable_cudnn_attention()
            log.warning(
                "%s on %s through the transformers backend: plain generate per batch, no memory cap; "
                "GPU generation is `backend: vllm` in the agents file",
                identifier,
                device,
            )
        return cls(model, tokenizer, identifier=identifier)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def add_adapter(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Load a PEFT adapter folder under ``name`` (default: derived from the path); idempotent."""
        from matsql.models import adapter_name_for

        path = str(Path(path).expanduser().resolve())
        name = name or adapter_name_for(path)
        with self.lock:
            if self.adapters.get(name) == path:
                return name
            if name in self.adapters:
                raise ValueError(f"adapter name {name!r} already holds {self.adapters[name]}")
            from peft import PeftModel

            if self.merge_adapters:
                merged = PeftModel.from_pretrained(copy.deepcopy(self.model), path).merge_and_unload()
                self.merged[name] = merged.eval()
            elif isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            self.model.eval()
            self.adapters[name] = path
        return name

    @contextlib.contextmanager
    def use_adapter(self, name: str | None) -> Iterator[Any]:
        """Run with adapter ``name`` active, or with adapters disabled for ``None``/``BASE``;
        yields the model to call (a merged copy, or the PEFT model with that adapter set)."""
        if name not in (None, BASE) and name not in self.adapters:
            raise KeyError(f"unknown adapter {name!r}; loaded: {sorted(self.adapters) or 'none'}")
        if name in self.merged:
            target = self.merged[name]
        elif not self.adapters or self.merge_adapters:
            target = self.model
        elif name in (None, BASE):
            with self.model.disable_adapter():
                yield self.model
            return
        else:
            self.model.set_adapter(name)
            target = self.model
        yield target

    @contextlib.contextmanager
    def _neutral_defaults(self, model: Any) -> Iterator[None]:
        """Hide the model's own generation_config (e.g. Qwen's top_k=20, repetition_penalty=1.05)
        during a call: ``generate`` fills every unset option from it, and the protocol's
        arguments must be the whole definition of sampling, as they are over HTTP."""
        from transformers import GenerationConfig

        hf = model.get_base_model() if hasattr(model, "get_base_model") else model
        saved = hf.generation_config
        hf.generation_config = GenerationConfig(
            eos_token_id=list(self.stop_ids), pad_token_id=self.stop_ids[0]
        )
        try:
            yield
        finally:
            hf.generation_config = saved

    def render(self, prompt: ChatPrompt) -> str:
        return render_chat(self.tokenizer, prompt)

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
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
        adapter: str | None = None,
        stats: GenerationStats | None = None,
    ) -> list[list[str]]:
        """``n`` completions for each rendered prompt text (see module doc)."""
        import torch

        check_sampling(n, max_tokens, temperature, top_p)
        t0 = time.perf_counter()
        enc = encode_checked(
            self.tokenizer, texts, max_tokens, self.max_positions, f"model's {self.max_positions} positions"
        )
        greedy = temperature <= 0
        rows = [Row(p, s, len(enc[p])) for p in range(len(enc)) for s in range(1 if greedy else n)]
        made: dict[tuple[int, int], list[int]] = {}
        counts = dict.fromkeys(("batches", "padded_prompt_tokens", "decode_steps", "row_steps"), 0)
        n_generated = 0
        with (
            self.lock,
            self.use_adapter(adapter) as model,
            self._neutral_defaults(model),
            torch.inference_mode(),
        ):
            for batch in pack_rows(rows, batch_size, max_batch_tokens, max_tokens):
                keys = None if greedy else [derive_seed(seed, texts[r.prompt], r.sample) for r in batch]
                new = self._decode(
                    [enc[r.prompt] for r in batch],
                    keys=keys,
                    budget=max_tokens,
                    stop=stop,
                    temperature=temperature,
                    top_p=top_p,
                    counts=counts,
                    model=model,
                )
                for r, toks in zip(batch, new, strict=True):
                    kept, ended = cut_at_stop_ids(toks, self.stop_ids)
                    made[(r.prompt, r.sample)] = kept
                    n_generated += len(kept) + int(ended)
        out = {
            k: truncate_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
            for k, ids in made.items()
        }
        result = [[out[(p, 0 if greedy else s)] for s in range(n)] for p in range(len(enc))]
        if stats is not None:
            stats.record(
                prompts=len(enc),
                n=n,
                prompt_tokens=sum(len(e) for e in enc),
                completion_tokens=n_generated,
                seconds=time.perf_counter() - t0,
                extra={"rows": len(rows), **counts},
            )
        return result

    def kv_cache(self, model: Any, length: int) -> Any | None:
        """The KV cache one ``generate`` call of ``model`` decodes into, ``length`` positions a
        row (longest prompt + budget); None for transformers' default (dynamic) cache.

        On a CPU: a static cache, preallocated and sized to exactly this batch. The default
        cache grows by ``torch.cat`` every step (the whole cache copied per layer), which
        dominated CPU decoding: 40 rows of SmolLM2-135M at ~400 tokens, one thread, 883 ms per
        step against 204 ms (commit e2fdd51; ``benchmarks/bench_kv_cache.py``). The engine makes
        the cache itself instead of asking for ``cache_implementation='static'``: transformers
        sizes each static cache it makes to the longest of all earlier calls on that model, so
        after one long call every shorter batch (length-sorted packing makes most of them
        shorter) zeroed and attended over the long one's positions. On tiny calls the choice
        costs nothing measurable either way (the tests' 2-layer model: 2-4 ms per step with
        either cache), so there is no size rule. On a GPU the default cache stays.
        """
        if self.device.type != "cpu":
            return None
        from transformers import StaticCache

        return StaticCache(config=model.config, max_cache_len=length)

    def _decode(
        self,
        inputs: list[list[int]],
        budget: int,
        stop: Sequence[str] | None,
        keys: list[int] | None,
        temperature: float,
        top_p: float,
        counts: dict[str, int],
        model: Any,
    ) -> list[list[int]]:
        """One left-padded ``generate`` call of ``model`` (from ``use_adapter``): up to ``budget``
        new ids per row (after an end token, filler). ``keys``: each row's sampling key, None for
        greedy."""
        import numpy as np
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        from matsql.backends.sampling import KeyedSampler

        width = max(len(x) for x in inputs)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        ids = np.full((len(inputs), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(inputs), width), dtype=np.int64)
        for j, x in enumerate(inputs):
            ids[j, width - len(x) :] = x
            mask[j, width - len(x) :] = 1
        gen_cfg = GenerationConfig(
            max_new_tokens=budget,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.stop_ids[0],  # filler after a row ends: cut like an eos
            stop_strings=list(stop) if stop else None,
            use_cache=True,
        )
        kwargs: dict[str, Any] = {"tokenizer": self.tokenizer} if stop else {}
        cache = self.kv_cache(model, width + budget)
        if cache is not None:
            kwargs[cache_keyword()] = cache
        if keys is not None:
            kwargs["logits_processor"] = LogitsProcessorList(
                [KeyedSampler(keys, temperature, top_p, width, steps=budget)]
            )
        seqs = model.generate(
            input_ids=torch.from_numpy(ids).to(self.device),
            attention_mask=torch.from_numpy(mask).to(self.device),
            generation_config=gen_cfg,
            **kwargs,
        )
        new = seqs[:, width:].tolist()  # the one host sync per batch
        steps = seqs.shape[1] - width
        counts["batches"] += 1
        counts["padded_prompt_tokens"] += len(inputs) * width
        counts["decode_steps"] += steps
        counts["row_steps"] += len(inputs) * steps
        return new


def cache_keyword() -> str:
    """``generate``'s keyword for a cache the caller made: ``cache`` from transformers 5.24 on
    (``past_key_values`` stays as a deprecated alias that warns), ``past_key_values`` before."""
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def resolve_merge(setting: bool | None) -> bool:
    """Whether an engine merges adapters into per-adapter weight copies (see module doc):
    ``MATSQL_MERGE_ADAPTERS=0|1`` wins, then an explicit setting; by default they stay unmerged."""
    env = os.environ.get("MATSQL_MERGE_ADAPTERS", "").strip().lower()
    if env in ("0", "1", "false", "true", "no", "yes"):
        return env in ("1", "true", "yes")
    if env not in ("", "auto"):
        raise ValueError(f"MATSQL_MERGE_ADAPTERS must be 0, 1 or auto, got {env!r}")
    return bool(setting)


class LocalBackend(RenderedTextBackend):
    """The in-process Backend: ``generate(prompts, n, temperature, max_tokens, stop, seed)``.

    ``model`` is a model spec (see ``matsql.models.resolve_model``) or a ``LocalEngine`` to share
    one loaded model between agents. ``adapter`` (a PEFT folder) is this backend's default; a
    call may pick another loaded adapter by name (``adapter_name=``, ``BASE`` for none).
    """

    def __init__(
        self,
        model: Any,
        adapter: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: Any = "auto",
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
        top_p: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.engine = (
            model if isinstance(model, LocalEngine) else LocalEngine.load(model, device=device, dtype=dtype)
        )
        self.adapter = self.engine.add_adapter(adapter) if adapter is not None else None
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.top_p = top_p
        self.name = name or f"local:{self.engine.identifier}" + (f"+{self.adapter}" if self.adapter else "")
        self.stats = GenerationStats()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def add_adapter(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        return self.engine.add_adapter(path, name)

    def encode(self, prompt: ChatPrompt) -> list[int]:
        """The exact prompt token ids the model is fed."""
        return encode_rendered(self.tokenizer, [self.render(prompt)])[0]

    def generate_text(
        self,
        texts: list[str],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
        *,
        adapter_name: str | None = None,
    ) -> list[list[str]]:
        """Like ``generate`` for already rendered prompt texts (the legacy completions API)."""
        if not texts:
            return []
        return self.engine.generate_texts(
            texts,
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            top_p=self.top_p,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            adapter=adapter_name if adapter_name is not None else self.adapter,
            stats=self.stats,
        )
