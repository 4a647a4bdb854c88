"""In-process generation with transformers (CPU or GPU), batched, with optional LoRA adapters.

How a call runs: prompts are rendered with the tokenizer's own chat template (+ prefix) and
tokenized without adding special tokens; each (prompt, sample) becomes a row; rows are sorted
by prompt length and packed into batches (``batch_size`` rows, and at most ``max_batch_tokens``
of rows x (longest prompt + max_tokens)), so little compute goes to padding; each batch is
left-padded and decoded with ``model.generate``. Greedy calls (T=0) decode each prompt once and
repeat the text ``n`` times.

Sampling is keyed per row (see ``sampling.py``): a completion is a function of the prompt,
the settings, ``seed`` and its sample index, not of which prompts shared its batch. ``seed``
and ``n`` therefore reproduce across batch sizes and resumed runs (on one machine; bf16
logits can differ in the last bit with different padding).

Several agents can share one loaded base model: a ``LocalEngine`` holds the model and its
LoRA adapters, and each ``LocalBackend`` is a view with its own default adapter and stats.
"""

from __future__ import annotations

import contextlib
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
    cut_at_stop_ids,
    derive_seed,
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

    def __init__(self, model: Any, tokenizer: Any, *, identifier: str = "model") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.identifier = identifier
        self.adapters: dict[str, str] = {}  # name -> path
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
        return cls(model, tok, identifier=r.identifier)

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

            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            self.model.eval()
            self.adapters[name] = path
        return name

    @contextlib.contextmanager
    def use_adapter(self, name: str | None) -> Iterator[None]:
        """Run with adapter ``name`` active, or with adapters disabled for ``None``/``BASE``."""
        if name not in (None, BASE) and name not in self.adapters:
            raise KeyError(f"unknown adapter {name!r}; loaded: {sorted(self.adapters) or 'none'}")
        if not self.adapters:
            yield
        elif name in (None, BASE):
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(name)
            yield

    @contextlib.contextmanager
    def _neutral_defaults(self) -> Iterator[None]:
        """Hide the model's own generation_config (e.g. Qwen's top_k=20, repetition_penalty=1.05)
        during a call: ``generate`` fills every unset option from it, and the protocol's
        arguments must be the whole definition of sampling, as they are over HTTP."""
        from transformers import GenerationConfig

        hf = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
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
        from transformers import GenerationConfig, LogitsProcessorList

        from matsql.backends.sampling import KeyedSampler

        if n < 1 or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need n >= 1, max_tokens >= 1, temperature >= 0, 0 < top_p <= 1 "
                f"(got n={n}, max_tokens={max_tokens}, temperature={temperature}, top_p={top_p})"
            )
        t0 = time.perf_counter()
        enc = encode_rendered(self.tokenizer, texts)
        for i, ids in enumerate(enc):
            if not ids:
                raise ValueError(f"prompt {i} renders to no tokens")
            if self.max_positions and len(ids) + max_tokens > self.max_positions:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; with max_tokens={max_tokens} it exceeds the "
                    f"model's {self.max_positions} positions"
                )
        greedy = temperature <= 0
        rows = [Row(p, s, len(enc[p])) for p in range(len(enc)) for s in range(1 if greedy else n)]
        out: dict[tuple[int, int], str] = {}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        gen_cfg = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.stop_ids[0],  # filler after a row ends: cut like an eos
            stop_strings=list(stop) if stop else None,
            use_cache=True,
        )
        n_generated = padded = batches = 0
        with self.lock, self.use_adapter(adapter), self._neutral_defaults(), torch.inference_mode():
            for batch in pack_rows(rows, batch_size, max_batch_tokens, max_tokens):
                width = batch[0].length
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, r in enumerate(batch):
                    ids[j, width - r.length :] = torch.tensor(enc[r.prompt])
                    mask[j, width - r.length :] = 1
                kwargs: dict[str, Any] = {"tokenizer": self.tokenizer} if stop else {}
                if not greedy:
                    keys = [derive_seed(seed, texts[r.prompt], r.sample) for r in batch]
                    kwargs["logits_processor"] = LogitsProcessorList(
                        [KeyedSampler(keys, temperature, top_p, width)]
                    )
                seqs = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=gen_cfg,
                    **kwargs,
                )
                new = seqs[:, width:].tolist()
                for j, r in enumerate(batch):
                    kept, ended = cut_at_stop_ids(new[j], self.stop_ids)
                    n_generated += len(kept) + int(ended)
                    text = self.tokenizer.decode(kept, skip_special_tokens=True)
                    out[(r.prompt, r.sample)] = truncate_at_stop(text, stop)
                padded += len(batch) * width
                batches += 1
        result = [[out[(p, 0 if greedy else s)] for s in range(n)] for p in range(len(enc))]
        if stats is not None:
            stats.calls += 1
            stats.prompts += len(enc)
            stats.completions += len(enc) * n
            stats.prompt_tokens += sum(len(e) for e in enc)
            stats.completion_tokens += n_generated
            stats.seconds += time.perf_counter() - t0
            for k, v in (("batches", batches), ("rows", len(rows)), ("padded_prompt_tokens", padded)):
                stats.extra[k] = stats.extra.get(k, 0.0) + v
        return result


class LocalBackend:
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

    def render(self, prompt: ChatPrompt) -> str:
        """The exact prompt text the model is fed (template + prefix)."""
        return self.engine.render(prompt)

    def encode(self, prompt: ChatPrompt) -> list[int]:
        """The exact prompt token ids the model is fed."""
        return encode_rendered(self.tokenizer, [self.render(prompt)])[0]

    def generate(
        self,
        prompts: list[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
        *,
        adapter_name: str | None = None,
    ) -> list[list[str]]:
        return self.generate_text(
            [self.render(p) for p in prompts],
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            adapter_name=adapter_name,
        )

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
