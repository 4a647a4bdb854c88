"""Pure helpers shared by backends: chat rendering, end-of-turn ids, stop strings, seeds.

Kept free of torch so the HTTP client and server can use them without loading a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from matsql.backends.base import ChatPrompt
from matsql.records import sampling_prompt_digest

# Special tokens that end an assistant turn in common chat formats (Qwen/ChatML, Llama 3, Phi,
# Gemma). Generation stops at any of them that the tokenizer knows, besides its eos token.
END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
)


def render_chat(tokenizer: Any, prompt: ChatPrompt) -> str:
    """The prompt text the model sees: chat template with the generation prompt, then the prefix.

    Appending the prefix to the rendered generation prompt (rather than HF's
    ``continue_final_message``, which strips whitespace around the final message) keeps the
    prefix byte-exact.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    text = tokenizer.apply_chat_template(prompt.as_messages(), add_generation_prompt=True, tokenize=False)
    return text + prompt.prefix


def encode_rendered(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered prompts, adding no special tokens: the template already placed
    BOS where the model wants one, so adding it again would duplicate it."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def stop_token_ids(tokenizer: Any, extra: Iterable[int] = ()) -> list[int]:
    """Ids that end a completion: eos, the generation config's eos ids and known end-of-turn tokens."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id, *extra]
    vocab = tokenizer.get_vocab()
    candidates += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    for i in candidates:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no eos or end-of-turn token"
        )
    return ids


def check_sampling(n: int, max_tokens: int, temperature: float, top_p: float) -> None:
    """Refuse settings no engine can honour, with the values named."""
    if n < 1 or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"need n >= 1, max_tokens >= 1, temperature >= 0, 0 < top_p <= 1 "
            f"(got n={n}, max_tokens={max_tokens}, temperature={temperature}, top_p={top_p})"
        )


def encode_checked(
    tokenizer: Any, texts: Sequence[str], max_tokens: int, limit: int | None, limit_name: str
) -> list[list[int]]:
    """``encode_rendered``, refusing a prompt that renders to nothing or leaves no room for
    ``max_tokens`` within ``limit`` positions (named in the error as ``limit_name``)."""
    enc = encode_rendered(tokenizer, texts)
    for i, ids in enumerate(enc):
        if not ids:
            raise ValueError(f"prompt {i} renders to no tokens")
        if limit and len(ids) + max_tokens > limit:
            raise ValueError(
                f"prompt {i} has {len(ids)} tokens; with max_tokens={max_tokens} it exceeds the {limit_name}"
            )
    return enc


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """Cut ``text`` before the earliest occurrence of any stop string (OpenAI semantics: the
    stop string itself is not returned)."""
    if not stop:
        return text
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def cut_at_stop_ids(ids: Sequence[int], stop_ids: Iterable[int]) -> tuple[list[int], bool]:
    """Generated ids up to (excluding) the first end token, and whether one was found."""
    stops = set(stop_ids)
    for k, t in enumerate(ids):
        if t in stops:
            return list(ids[:k]), True
    return list(ids), False


def derive_seed(seed: int, prompt: ChatPrompt | str, sample: int = 0, bits: int = 63) -> int:
    """A seed that is a pure function of (seed, prompt content, sample index).

    Sampling keyed this way does not depend on batch composition, request order, concurrency or
    on where a resumed run restarted. Two identical prompts in one call get identical samples;
    ask for ``n`` samples instead of repeating a prompt.
    """
    h = hashlib.sha256(f"{int(seed)}|{int(sample)}|{sampling_prompt_digest(prompt)}".encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << bits) - 1)


class RenderedTextBackend:
    """``generate`` for in-process backends that take rendered prompt texts: the prompt is
    rendered with the model's own chat template (``render_chat``) and handed to the subclass's
    ``generate_text``, so every in-process engine feeds the model the same text. Extra keyword
    arguments (an engine's own options) pass through."""

    tokenizer: Any

    def render(self, prompt: ChatPrompt) -> str:
        """The exact prompt text the model is fed (template + prefix)."""
        return render_chat(self.tokenizer, prompt)

    def generate_text(self, texts: list[str], **kw: Any) -> list[list[str]]:
        raise NotImplementedError

    def generate(
        self,
        prompts: list[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
        **kw: Any,
    ) -> list[list[str]]:
        texts = [self.render(p) for p in prompts]
        return self.generate_text(
            texts, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed, **kw
        )
