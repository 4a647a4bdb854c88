"""The one protocol every LLM backend implements.

A prompt is a list of chat messages plus an optional assistant-turn prefix (validators start
their turn with ``SELECT.`` / ``CONDITION.``). Chat formatting is the backend's job: the local
backend renders with the tokenizer's own chat template, the HTTP backend sends messages to a
chat endpoint with ``continue_final_message`` so the server's template is used. Either way the
prompt never carries a duplicated BOS or a missing end-of-turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ChatPrompt:
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, ending with a user turn
    prefix: str = ""  # text the assistant turn starts with; the completion continues it

    @classmethod
    def of(cls, messages: list[dict[str, str]], prefix: str = "") -> ChatPrompt:
        return cls(tuple((m["role"], m["content"]) for m in messages), prefix)

    def as_messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class GenerationStats:
    """Running counters, read by progress bars and throughput benchmarks."""

    calls: int = 0
    prompts: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def record(
        self,
        *,
        prompts: int,
        n: int,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Add one generate call (``n`` completions per prompt) to the counters."""
        self.calls += 1
        self.prompts += prompts
        self.completions += prompts * n
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.seconds += seconds
        for k, v in (extra or {}).items():
            self.extra[k] = self.extra.get(k, 0.0) + v


@runtime_checkable
class Backend(Protocol):
    name: str
    stats: GenerationStats

    def generate(
        self,
        prompts: list[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
    ) -> list[list[str]]:
        """Return ``n`` completions for each prompt (outer list aligned with ``prompts``).

        Completions exclude the prompt and the prefix. ``temperature == 0`` means greedy (then
        the ``n`` completions are identical). ``seed`` makes sampling reproducible: the same
        prompts, n, settings and seed give the same texts on the same hardware.
        """
        ...
