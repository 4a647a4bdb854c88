"""Client for OpenAI-compatible servers (``vllm serve``, ``matsql.backends.server``).

One request per prompt (its ``n`` samples come back together), at most ``concurrency`` in
flight. A request that times out, fails to connect, gets 429/5xx, or returns a body that is
not JSON or lacks exactly ``n`` choices is retried with exponential backoff and jitter; a
prompt's completions always come from one successful response, in choice order, so nothing
is lost or duplicated. After ``max_retries`` the whole call raises: never a partial result.

The prefix goes as a final assistant message with vLLM's ``continue_final_message: true,
add_generation_prompt: false`` extension, so the server's own chat template renders it.
Each prompt's seed is derived from ``seed`` and the prompt's content, so results do not
depend on concurrency, request order or which other prompts shared the call.

``generate`` is synchronous: the client runs on a private event loop thread, which makes it
safe to call from any thread, including one that already runs an event loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

import httpx

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.backends.chat import derive_seed, render_chat, truncate_at_stop

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 409, 425, 429})


class BackendError(RuntimeError):
    """A request failed for good (non-retryable status, or retries exhausted)."""


class MalformedResponse(ValueError):
    """A 200 response whose body is not a valid completion with the expected choices."""


def parse_choices(
    body: bytes, n: int, kind: Literal["chat", "completions"]
) -> tuple[list[str], dict[str, Any]]:
    """The ``n`` completion texts of a response body, in choice-index order, and its usage."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MalformedResponse(f"body is not JSON ({e}): {body[:200]!r}") from e
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise MalformedResponse(f"expected {n} choices, got {got}")
    if all(isinstance(c, dict) and isinstance(c.get("index"), int) for c in choices):
        choices = sorted(choices, key=lambda c: c["index"])
        if [c["index"] for c in choices] != list(range(n)):
            raise MalformedResponse(f"choice indices {[c['index'] for c in choices]} are not 0..{n - 1}")
    texts = []
    for c in choices:
        text = (c.get("message") or {}).get("content") if kind == "chat" else c.get("text")
        if not isinstance(text, str):
            raise MalformedResponse(f"choice without text: {str(c)[:200]}")
        texts.append(text)
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return texts, usage


def _api_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


class OpenAIBackend:
    """Backend over an OpenAI-compatible HTTP endpoint; see the module doc for semantics.

    ``mode="completions"`` posts locally rendered prompts to ``/v1/completions`` instead (needs
    ``tokenizer``: an object or a model spec); use it for servers without chat templates.
    ``extra_body`` is merged into every request (e.g. vLLM's ``top_k``); note that vLLM applies
    the model's generation_config defaults (top_k, repetition_penalty) unless told otherwise.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        mode: Literal["chat", "completions"] = "chat",
        tokenizer: Any = None,
        top_p: float | None = None,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        if mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {mode!r}")
        if mode == "completions":
            if tokenizer is None:
                raise ValueError(
                    "mode='completions' renders prompts locally and needs a tokenizer (object or model spec)"
                )
            if isinstance(tokenizer, str):
                from matsql.models import load_tokenizer

                tokenizer = load_tokenizer(tokenizer)
        self.root = _api_root(base_url)
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.mode = mode
        self.tokenizer = tokenizer
        self.top_p = top_p
        self.extra_body = dict(extra_body or {})
        self.name = name or f"openai:{model}@{self.root}"
        self.stats = GenerationStats()
        self._jitter = random.Random()  # backoff jitter only; never affects outputs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ event loop plumbing

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name=f"matsql-http-{id(self):x}", daemon=True)
                t.start()
                self._loop, self._thread = loop, t
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "OpenAIBackend.generate called from its own event loop; await agenerate instead"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            limits = httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            )
            self._client = httpx.AsyncClient(headers=headers, limits=limits, timeout=self.timeout_s)
        return self._client

    def close(self) -> None:
        """Close connections and stop the loop thread (the backend can be used again after)."""
        if self._loop is None:
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join()
        self._loop.close()
        self._loop = self._thread = None
        self._sem = None

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ protocol

    def generate(
        self,
        prompts: list[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
    ) -> list[list[str]]:
        if not prompts:
            return []
        return self._run(self.agenerate(prompts, n, temperature, max_tokens, stop, seed))

    async def agenerate(
        self,
        prompts: Sequence[ChatPrompt],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int = 0,
    ) -> list[list[str]]:
        """Async ``generate``; must run on this backend's loop (``generate`` arranges that)."""
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={n}, max_tokens={max_tokens})")
        t0 = time.perf_counter()
        if self._sem is None:  # one bound for all calls in flight, from any thread
            self._sem = asyncio.Semaphore(self.concurrency)
        try:
            async with asyncio.TaskGroup() as tg:  # a failure cancels the call's other requests
                tasks = [
                    tg.create_task(self._one(i, p, self._sem, n, temperature, max_tokens, stop, seed))
                    for i, p in enumerate(prompts)
                ]
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None
        out = [t.result() for t in tasks]
        self.stats.calls += 1
        self.stats.prompts += len(prompts)
        self.stats.completions += len(prompts) * n
        self.stats.seconds += time.perf_counter() - t0
        return out

    def request_body(
        self,
        prompt: ChatPrompt,
        n: int,
        temperature: float,
        max_tokens: int,
        stop: list[str] | None,
        seed: int,
    ) -> dict[str, Any]:
        """The JSON body for one prompt (public so tests and logs can show what is sent)."""
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": derive_seed(seed, prompt, bits=31),
        }
        if self.mode == "chat":
            messages = prompt.as_messages()
            if prompt.prefix:
                messages.append({"role": "assistant", "content": prompt.prefix})
                body |= {"continue_final_message": True, "add_generation_prompt": False}
            body["messages"] = messages
        else:
            # the rendered template already holds BOS; vLLM would add another by default
            body |= {"prompt": render_chat(self.tokenizer, prompt), "add_special_tokens": False}
        if stop:
            body["stop"] = list(stop)
        if self.top_p is not None:
            body["top_p"] = self.top_p
        return body | self.extra_body

    async def _one(
        self,
        index: int,
        prompt: ChatPrompt,
        sem: asyncio.Semaphore,
        n: int,
        temperature: float,
        max_tokens: int,
        stop: list[str] | None,
        seed: int,
    ) -> list[str]:
        body = self.request_body(prompt, n, temperature, max_tokens, stop, seed)
        url = f"{self.root}/v1/{'chat/completions' if self.mode == 'chat' else 'completions'}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            async with sem:
                try:
                    resp = await self._http().post(url, json=body)
                    if resp.status_code == 200:
                        texts, usage = parse_choices(resp.content, n, self.mode)
                        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
                        return [truncate_at_stop(t, stop) for t in texts]
                    last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    if resp.status_code < 500 and resp.status_code not in RETRY_STATUS:
                        raise BackendError(f"{self.name}: prompt {index}: {last} (not retryable)")
                    retry_after = _retry_after(resp)
                except (httpx.TimeoutException, httpx.TransportError, MalformedResponse) as e:
                    last = f"{type(e).__name__}: {e}"
            if attempt == self.max_retries:
                break
            self.stats.extra["retries"] = self.stats.extra.get("retries", 0.0) + 1
            delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + self._jitter.random())
            await asyncio.sleep(max(delay, min(retry_after or 0.0, self.max_backoff_s)))
        raise BackendError(
            f"{self.name}: prompt {index} failed after {self.max_retries + 1} attempts; last: {last}"
        )


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
