"""A deterministic fake Backend for tests and dry runs: no model, instant answers.

Each completion names its prompt (content digest) and sample index, so a caller can check
that every prompt got exactly its own ``n`` samples, in order, with none lost or duplicated
(the fault-injection tests of the HTTP client rely on this).
"""

from __future__ import annotations

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.backends.chat import truncate_at_stop
from matsql.records import sampling_prompt_digest


def echo_text(prompt: ChatPrompt, sample: int) -> str:
    """The completion ``EchoBackend`` returns for ``prompt``'s sample ``sample``."""
    return f"echo:{sampling_prompt_digest(prompt)[:16]}:{sample}"


class EchoBackend:
    name = "echo"

    def __init__(self) -> None:
        self.stats = GenerationStats()

    def generate(
        self,
        prompts: list[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
    ) -> list[list[str]]:
        out = [[truncate_at_stop(echo_text(p, s), stop) for s in range(n)] for p in prompts]
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.completions += len(prompts) * n
        return out
