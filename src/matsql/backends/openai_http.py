"""Client for OpenAI-compatible servers (``vllm serve``, ``matsql.backends.server``).

One request per prompt (its ``n`` samples come back together), at most ``concurrency`` in
flight. A request that times out, fails to connect, gets 429/5xx, or returns a body that is
not JSON or lacks exactly ``n`` choices is retried with exponential backoff and jitter; a
prompt's completions always come from one successful response, in choice order, so nothing
is lost or duplicated. After ``max_retries`` the whole call raises: never a partial result.
``timeout_s`` is a total deadline per attempt (connect, send, wait and read together): a server
that drips its answer byte by byte cannot keep a request alive past it. A request the server
rejects (a 4xx other than 408/409/425/429, e.g. 400 for a prompt longer than the context)
raises :class:`RequestRejected` (``permanent``): the rollout makes that question an error
record instead of stopping. Completion texts are sanitised (lone surrogates, NUL -> U+FFFD).

Adapters map to served LoRA modules (``vllm serve ... --enable-lora --lora-modules NAME=PATH``).
An agent with ``adapter: PATH`` is sent to the served name of that adapter: the one its
``lora_modules: {NAME: PATH}`` entry names (the agents file mirrors the serve command), else a
served model whose id is the adapter string itself, else the served LoRA module whose root
(``GET /v1/models`` reports it) is that path. The server must list the name; otherwise the
backend refuses (:class:`AdapterNotServed`) before any request, never silently sending the
request to the base model.

With ``load_adapters`` (a server that loads adapters at run time: ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
vllm serve ... --enable-lora``, one engine kept for a whole plan), an adapter that no
``lora_modules`` entry names is loaded by ``POST /v1/load_lora_adapter`` under a name made of its
folder name and a digest of its weights (:func:`runtime_lora_name`): a stage that retrains into
the same folder gets a new name, never the old weights. The server reads the folder itself, so it
must see the same path (the same machine or a shared file system).

The prefix goes as a final assistant message with vLLM's ``continue_final_message: true,
add_generation_prompt: false`` extension, so the server's own chat template renders it.
Each prompt's seed is derived from ``seed`` and the prompt's content, so results do not
depend on concurrency, request order or which other prompts shared the call.

``generate`` is synchronous: the client runs on a private event loop thread, which makes it
safe to call from any thread, including one that already runs an event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.backends.chat import derive_seed, render_chat, truncate_at_stop

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 409, 425, 429})


class BackendError(RuntimeError):
    """A request failed for good (non-retryable status, or retries exhausted)."""


class RequestRejected(BackendError):
    """The server rejected the request itself (4xx): retrying it cannot help."""

    permanent = True


class AdapterNotServed(ValueError):
    """An adapter (or model) the server does not serve: refused, never sent to another model."""


class MalformedResponse(ValueError):
    """A 200 response whose body is not a valid completion with the expected choices."""


_UNSAFE_TEXT = re.compile("[\ud800-\udfff\x00]")


def sanitize_text(text: str) -> str:
    """Lone surrogates (JSON may carry "\\ud800"; no UTF-8 encoder takes them) and NUL -> U+FFFD."""
    return _UNSAFE_TEXT.sub("\ufffd", text)


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
        texts.append(sanitize_text(text))
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
        adapter: str | None = None,
        lora_modules: dict[str, str] | None = None,
        load_adapters: bool = False,
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
        self.adapter = adapter
        self.lora_modules = dict(lora_modules or {})
        self.load_adapters = load_adapters
        self.served: str | None = None  # the model name requests carry, once checked
        self._name = name
        self.name = name or f"openai:{model}{f'+{adapter}' if adapter else ''}@{self.root}"
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

    # ------------------------------------------------------------------ served models

    def check_served(self) -> str:
        """Resolve and check the served model name requests will carry (see the module doc);
        raises :class:`AdapterNotServed` naming the adapter, the server and what it serves.
        Without an adapter the name is ``model``, unchecked (the server answers for it)."""
        if self.served is None:
            if self.adapter is None:
                self.served = self.model
            else:
                self._run(self._resolve_served())
        assert self.served is not None
        return self.served

    async def _served_models(self) -> dict[str, dict[str, Any]]:
        url = f"{self.root}/v1/models"
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self._http().get(url)
        except (TimeoutError, httpx.HTTPError) as e:
            raise BackendError(
                f"{self.name}: cannot list served models at {url}: {type(e).__name__}: {e}"
            ) from e
        if resp.status_code != 200:
            raise BackendError(f"{self.name}: GET {url}: HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            data = resp.json()["data"]
            return {str(m["id"]): m for m in data if isinstance(m, dict) and "id" in m}
        except (ValueError, KeyError, TypeError) as e:
            raise BackendError(f"{self.name}: GET {url}: not a model list: {resp.text[:200]}") from e

    async def _resolve_served(self) -> None:
        if self.adapter is None:  # the base model: the server answers for it (vLLM: 404 if unknown)
            self.served = self.model
            return
        served = await self._served_models()
        listing = ", ".join(sorted(served)) or "nothing"
        where = f"{self.root}/v1/models"
        adapter = self.adapter
        named = [n for n, p in self.lora_modules.items() if _same_path(p, adapter)]
        if len(named) > 1:
            raise AdapterNotServed(f"adapter {adapter}: lora_modules maps it to several names {named}")
        if named:
            name = named[0]
            if name not in served:
                raise AdapterNotServed(
                    f"adapter {adapter} maps to LoRA module {name!r} (lora_modules), but {where} does not "
                    f"list it (it serves: {listing}); start the server with --enable-lora "
                    f"--lora-modules {name}={adapter}"
                )
        elif adapter in served and adapter != self.model:
            name = adapter
        elif self.load_adapters:
            name = await self._load_adapter(adapter, served)
        else:
            by_root = [
                i
                for i, m in served.items()
                if m.get("root") and i != self.model and _same_path(str(m["root"]), adapter)
            ]
            if len(by_root) != 1:
                raise AdapterNotServed(
                    f"adapter {adapter} is not served by {self.root} (it serves: {listing}); serve it with "
                    f"--enable-lora --lora-modules NAME={adapter} and map it in the agents file with "
                    f"lora_modules: {{NAME: {adapter}}}"
                    + (f" (several served modules have this root: {by_root})" if by_root else "")
                )
            name = by_root[0]
        self.served = name
        if self._name is None:
            self.name = f"openai:{name}({adapter})@{self.root}"

    async def _load_adapter(self, adapter: str, served: dict[str, dict[str, Any]]) -> str:
        """The served name of ``adapter``, loaded at run time unless the server has it already."""
        name = runtime_lora_name(adapter)
        if name in served:
            return name
        url = f"{self.root}/v1/load_lora_adapter"
        body = {"lora_name": name, "lora_path": os.path.abspath(adapter)}
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self._http().post(url, json=body)
        except (TimeoutError, httpx.HTTPError) as e:
            raise BackendError(f"{self.name}: POST {url} ({adapter}): {type(e).__name__}: {e}") from e
        if resp.status_code == 200:
            return name
        if resp.status_code == 400 and "already been loaded" in resp.text:  # another client won the race
            return name
        hint = (
            " (a server without the route does not load adapters at run time: start it with "
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve ... --enable-lora, or serve the adapter "
            "with --lora-modules and drop load_adapters)"
            if resp.status_code in (404, 405)
            else ""
        )
        raise AdapterNotServed(
            f"adapter {adapter}: POST {url} as {name!r}: HTTP {resp.status_code}: {resp.text[:300]}{hint}"
        )

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
        if self.served is None:
            self.check_served()
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
            "model": self.served or (self.model if self.adapter is None else self.adapter),
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
                    async with asyncio.timeout(self.timeout_s):  # total: a dripping answer cannot outlast it
                        resp = await self._http().post(url, json=body)
                    if resp.status_code == 200:
                        texts, usage = parse_choices(resp.content, n, self.mode)
                        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                        self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
                        return [truncate_at_stop(t, stop) for t in texts]
                    last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    if resp.status_code < 500 and resp.status_code not in RETRY_STATUS:
                        raise RequestRejected(f"{self.name}: prompt {index}: {last} (not retryable)")
                    retry_after = _retry_after(resp)
                except TimeoutError:
                    last = f"no complete answer within the {self.timeout_s:g} s deadline"
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


def runtime_lora_name(adapter: str | os.PathLike[str]) -> str:
    """The name an adapter is loaded under at run time: its folder's name and the first 12 hex
    digits of a sha256 over its config and weights (``adapter_config.json``, then
    ``adapter_model.safetensors`` or ``.bin``), so new weights in the same folder get a new name."""
    from matsql.fileio import sha256_file

    folder = Path(adapter)
    config = folder / "adapter_config.json"
    weights = next(
        (w for w in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if w.is_file()), None
    )
    if not config.is_file() or weights is None:
        raise AdapterNotServed(
            f"adapter {adapter}: no adapter_config.json and adapter_model.safetensors there to load at run time"
        )
    h = hashlib.sha256(f"{sha256_file(config)}\0{sha256_file(weights)}".encode()).hexdigest()
    return f"{folder.resolve().name}-{h[:12]}"


def _same_path(a: str, b: str) -> bool:
    """The same adapter path: equal strings, or equal once resolved on this machine."""
    if a == b:
        return True
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
