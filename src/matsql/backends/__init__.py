"""LLM backends behind one protocol (``base.Backend``): in-process transformers, OpenAI-compatible
HTTP, and a fake echo backend; ``make_backend`` builds one from an AGENTS.yaml entry."""

from matsql.backends.base import Backend, ChatPrompt, GenerationStats
from matsql.backends.registry import make_backend

__all__ = ["Backend", "ChatPrompt", "GenerationStats", "make_backend"]
