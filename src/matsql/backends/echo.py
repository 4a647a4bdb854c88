"""A deterministic fake Backend for tests and dry runs: no model, instant answers.

Each completion names its prompt (content digest) and sample index, so a caller can check
that every prompt got exactly its own ``n`` samples, in order, with none lost or duplicated
(the fault-injection tests of the HTTP client rely on this).

With ``replies`` (an agents file's ``replies:`` list) each completion is instead one of those
texts, drawn by the prompt's digest, the sample index and the seed: a dry run then has SQL that
executes (some of it right by chance) and verdicts of both kinds, so every stage of a plan after
the checkpoint picks can run on a CPU in minutes (``scripts/v2_cpu_smoke.sh canned``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.backends.chat import truncate_at_stop
from matsql.records import sampling_prompt_digest


def echo_text(prompt: ChatPrompt, sample: int) -> str:
    """The completion ``EchoBackend`` returns for ``prompt``'s sample ``sample``."""
    return f"echo:{sampling_prompt_digest(prompt)[:16]}:{sample}"


def canned_text(replies: Sequence[str], prompt: ChatPrompt, sample: int, seed: int) -> str:
    """One of ``replies`` for ``prompt``'s sample ``sample`` under ``seed``: a function of the
    three, as a sampled completion is, and spread evenly over the replies."""
    key = f"{sampling_prompt_digest(prompt)}:{sample}:{seed}".encode()
    return replies[int(hashlib.sha256(key).hexdigest()[:12], 16) % len(replies)]


class EchoBackend:
    name = "echo"

    def __init__(self, replies: Sequence[str] | None = None) -> None:
        if replies is not None and not replies:
            raise ValueError("echo backend: replies, if given, needs at least one text")
        self.replies = list(replies) if replies is not None else None
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
        if self.replies is None:
            out = [[truncate_at_stop(echo_text(p, s), stop) for s in range(n)] for p in prompts]
        else:
            out = [
                [truncate_at_stop(canned_text(self.replies, p, s, seed), stop) for s in range(n)]
                for p in prompts
            ]
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.completions += len(prompts) * n
        return out
