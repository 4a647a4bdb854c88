"""A small OpenAI-compatible HTTP server over any Backend (stdlib only).

Serves ``POST /v1/chat/completions`` (honouring vLLM's ``continue_final_message``),
``POST /v1/completions`` when the backend can take rendered prompt texts (``LocalBackend``),
``GET /v1/models``, ``GET /health`` and ``GET /debug/requests`` (the request log). It lets
several processes share one loaded model, and lets tests exercise the HTTP client against
real sockets, with deterministic fault injection (500s, 429s, dropped connections, slow
answers past the client's timeout, malformed or short bodies, answers dripped byte by byte,
and 400s or drips for prompts that contain a marker text).

Named LoRA modules are served as vLLM serves them (``--lora-modules NAME=PATH``): listed by
``/v1/models`` (``id`` NAME, ``root`` PATH, ``parent`` the base model), a request whose
``model`` is NAME runs on that module's backend (the base model with adapter PATH), and, once
modules are served, a request for a name the server does not serve gets 404 as from vLLM. With
``load_adapter`` (``--allow-runtime-lora``, vLLM's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``),
``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` adds a module as vLLM does: 400 for a
name already loaded or a missing field, 404 for a path that holds no adapter; without it the
route does not exist (404).

Requests run one at a time on the backend (generic backends need not be thread-safe), so
throughput comes from the prompts and ``n`` inside a request; use vLLM for serving at scale.

    python -m matsql.backends.server --model qwen2.5-coder-0.5b-instruct --port 8000
    python -m matsql.backends.server --model echo --port 0 --error500-rate 0.3   # prints the port
    python -m matsql.backends.server --model echo --lora-modules val-sel=runs/a/val-sel
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from matsql.backends.base import Backend, ChatPrompt
from matsql.records import sampling_prompt_digest

log = logging.getLogger(__name__)

FAULTS = ("error500", "rate_limit", "drop", "slow", "malformed", "short", "drip")


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities of each injected fault per POST; the draw for request k depends only on
    (seed, k), so a run's fault schedule is reproducible."""

    error500: float = 0.0  # HTTP 500
    rate_limit: float = 0.0  # HTTP 429 with Retry-After: 0
    drop: float = 0.0  # close the connection without answering
    slow: float = 0.0  # answer correctly but only after slow_s (past the client's timeout)
    malformed: float = 0.0  # 200 with a truncated JSON body
    short: float = 0.0  # 200 with valid JSON but one choice missing
    drip: float = 0.0  # a correct answer sent one byte every drip_s (each read is quick)
    slow_s: float = 5.0
    drip_s: float = 0.05
    seed: int = 0
    reject_marker: str | None = None  # a prompt containing this text gets HTTP 400
    drip_marker: str | None = None  # a prompt containing this text is always dripped

    def __post_init__(self) -> None:
        total = sum(getattr(self, f) for f in FAULTS)  # rates only
        if any(getattr(self, f) < 0 for f in FAULTS) or total > 1.0:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {asdict(self)}")

    def draw(self, k: int) -> str | None:
        u = random.Random(f"{self.seed}:{k}").random()
        acc = 0.0
        for f in FAULTS:
            acc += getattr(self, f)
            if u < acc:
                return f
        return None


class BadRequest(ValueError):
    pass


class UnknownModel(ValueError):
    pass


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    raise BadRequest(f"message content must be a string or text parts, got {type(c).__name__}")


def chat_prompt_from_request(req: dict[str, Any]) -> ChatPrompt:
    """The ChatPrompt a chat request asks for (a trailing assistant message is the prefix when
    ``continue_final_message`` is set, as in vLLM)."""
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
        raise BadRequest("'messages' must be a non-empty list of {role, content}")
    pairs = [(str(m["role"]), _content(m)) for m in msgs]
    if req.get("continue_final_message"):
        if pairs[-1][0] != "assistant":
            raise BadRequest("continue_final_message needs a final assistant message")
        if req.get("add_generation_prompt", False):
            raise BadRequest("continue_final_message cannot be combined with add_generation_prompt")
        return ChatPrompt(tuple(pairs[:-1]), pairs[-1][1])
    if not req.get("add_generation_prompt", True):
        raise BadRequest("add_generation_prompt=false is only supported with continue_final_message")
    if pairs[-1][0] == "assistant":
        raise BadRequest("a final assistant message needs continue_final_message=true")
    return ChatPrompt(tuple(pairs), "")


def sampling_args(req: dict[str, Any]) -> dict[str, Any]:
    """Protocol arguments from an OpenAI request body (defaults as in the OpenAI API)."""
    stop = req.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("'stop' must be a string or a list of strings")
    try:
        args = {
            "n": int(req.get("n") or 1),
            "temperature": 1.0 if req.get("temperature") is None else float(req["temperature"]),
            "max_tokens": int(req.get("max_tokens") or req.get("max_completion_tokens") or 256),
            "stop": stop,
            "seed": int(req.get("seed") or 0),
        }
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad sampling parameter: {e}") from e
    if args["n"] < 1 or args["max_tokens"] < 1 or args["temperature"] < 0:
        raise BadRequest("need n >= 1, max_tokens >= 1, temperature >= 0")
    return args


class OpenAIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        backend: Backend,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model_name: str | None = None,
        faults: FaultConfig | None = None,
        log_size: int = 100_000,
        lora_modules: dict[str, tuple[str, Backend]] | None = None,
        load_adapter: Callable[[str], Backend] | None = None,
    ) -> None:
        super().__init__((host, port), _Handler)
        self.backend = backend
        self.model_name = model_name or backend.name
        self.lora_modules = dict(lora_modules or {})  # NAME -> (PATH, backend with that adapter)
        self.load_adapter = load_adapter  # PATH -> backend with that adapter, for runtime loading
        self.faults = faults or FaultConfig()
        self.backend_lock = threading.Lock()
        self.counter_lock = threading.Lock()
        self.count = 0
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=log_size)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def next_request(self) -> int:
        with self.counter_lock:
            self.count += 1
            return self.count

    def start_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True, name="matsql-server")
        t.start()
        return t

    @contextmanager
    def running(self) -> Iterator[OpenAIServer]:
        """Serve from a thread for the ``with`` block, then stop and close the socket."""
        self.start_in_thread()
        try:
            yield self
        finally:
            self.shutdown()
            self.server_close()

    def models(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` entries: the base model, then each LoRA module (as vLLM lists them)."""
        out = [{"id": self.model_name, "object": "model", "owned_by": "matsql", "root": None, "parent": None}]
        out += [
            {"id": name, "object": "model", "owned_by": "matsql", "root": path, "parent": self.model_name}
            for name, (path, _) in self.lora_modules.items()
        ]
        return out

    def add_lora(self, req: dict[str, Any]) -> tuple[int, str]:
        """``POST /v1/load_lora_adapter`` as vLLM answers it: (status, message)."""
        name, path = req.get("lora_name"), req.get("lora_path")
        if not name or not path:
            return 400, "Both 'lora_name' and 'lora_path' must be provided."
        if name in self.lora_modules:
            return 400, f"The lora adapter '{name}' has already been loaded."
        if not (Path(path) / "adapter_config.json").is_file():
            return 404, f"Loading lora {name} failed: No adapter found for {path}"
        assert self.load_adapter is not None
        self.lora_modules[name] = (str(path), self.load_adapter(str(path)))
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def backend_for(self, req: dict[str, Any]) -> Backend:
        """The backend a request's ``model`` names: a LoRA module, or the base model."""
        name = req.get("model")
        if name in self.lora_modules:
            return self.lora_modules[name][1]
        if self.lora_modules and name not in (None, self.model_name):
            raise UnknownModel(f"The model `{name}` does not exist.")
        return self.backend

    def run(self, kind: str, req: dict[str, Any]) -> tuple[list[str], dict[str, int], str]:
        """Run one request on the backend its ``model`` names: (texts, usage, prompt digest)."""
        backend = self.backend_for(req)
        args = sampling_args(req)
        if kind == "chat":
            prompt = chat_prompt_from_request(req)
            digest = sampling_prompt_digest(prompt)
            call = lambda: backend.generate([prompt], **args)[0]  # noqa: E731
        else:
            text = req.get("prompt")
            if not isinstance(text, str):
                raise BadRequest("'prompt' must be one string")
            gen_text = getattr(backend, "generate_text", None)
            if gen_text is None:
                raise BadRequest(
                    f"backend {backend.name} does not take raw prompts; use /v1/chat/completions"
                )
            digest = sampling_prompt_digest(text)
            call = lambda: gen_text([text], **args)[0]  # noqa: E731
        with self.backend_lock:
            before = (backend.stats.prompt_tokens, backend.stats.completion_tokens)
            texts = call()
            usage = {
                "prompt_tokens": backend.stats.prompt_tokens - before[0],
                "completion_tokens": backend.stats.completion_tokens - before[1],
            }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return texts, usage, digest


def completion_body(kind: str, model: str, texts: list[str], usage: dict[str, int]) -> dict[str, Any]:
    """An OpenAI response body. ``finish_reason`` is null: the Backend protocol does not report it."""
    if kind == "chat":
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": None}
            for i, t in enumerate(texts)
        ]
        obj = "chat.completion"
    else:
        choices = [{"index": i, "text": t, "finish_reason": None} for i, t in enumerate(texts)]
        obj = "text_completion"
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as clients' connection pools expect

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. timed out)
            self.close_connection = True

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(
            status,
            {
                "error": {
                    "message": message,
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                }
            },
            headers,
        )

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": self.server.models()})
        elif self.path == "/debug/requests":
            self._json(200, list(self.server.request_log))
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        kinds = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path == "/v1/load_lora_adapter" and self.server.load_adapter is not None:
            try:
                req = json.loads(raw)
            except json.JSONDecodeError as e:
                self._error(400, f"body is not JSON: {e}")
                return
            status, message = self.server.add_lora(req if isinstance(req, dict) else {})
            self.server.request_log.append(
                {"path": self.path, "status": status, "model": req.get("lora_name")}
            )
            if status == 200:
                self._send(200, message.encode())
            else:
                self._error(status, message)
            return
        if self.path not in kinds:
            self._error(404, f"no route POST {self.path}")
            return
        kind = kinds[self.path]
        k = self.server.next_request()
        fault = self.server.faults.draw(k)
        entry: dict[str, Any] = {
            "request": k,
            "path": self.path,
            "fault": fault,
            "digest": None,
            "status": None,
        }
        self.server.request_log.append(entry)
        if fault == "drop":
            entry["status"] = "dropped"
            self.close_connection = True
            return
        if fault in ("error500", "rate_limit"):
            status = 500 if fault == "error500" else 429
            entry["status"] = status
            self._error(status, f"injected fault {fault}", {"Retry-After": "0"} if status == 429 else None)
            return
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise BadRequest("body must be a JSON object")
            entry["model"] = req.get("model")
            marker = self.server.faults.reject_marker
            if marker and marker in json.dumps(req.get("messages") or req.get("prompt"), ensure_ascii=False):
                raise BadRequest(f"injected fault: this prompt is rejected (contains {marker!r})")
            texts, usage, entry["digest"] = self.server.run(kind, req)
        except UnknownModel as e:
            entry["status"] = 404
            self._error(404, str(e))
            return
        except (json.JSONDecodeError, BadRequest) as e:
            entry["status"] = 400
            self._error(400, str(e))
            return
        except Exception as e:  # the backend failed: report it, keep serving
            log.exception("backend error")
            entry["status"] = 500
            self._error(500, f"backend error: {type(e).__name__}: {e}")
            return
        body = completion_body(kind, self.server.model_name, texts, usage)
        if fault == "short":
            body["choices"] = body["choices"][:-1]
        payload = json.dumps(body).encode()
        if fault == "malformed":
            payload = payload[: len(payload) // 2]
        if fault == "slow":
            time.sleep(self.server.faults.slow_s)
        entry["status"] = 200
        drip_marker = self.server.faults.drip_marker
        if fault == "drip" or (drip_marker and drip_marker in json.dumps(req, ensure_ascii=False)):
            entry["fault"] = "drip"
            self._drip(payload)
            return
        self._send(200, payload)

    def _drip(self, payload: bytes) -> None:
        """A right answer, one byte at a time: each read is quick, the whole takes long."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(payload)):
                self.wfile.write(payload[i : i + 1])
                self.wfile.flush()
                time.sleep(self.server.faults.drip_s)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class AdapterEcho:
    """The echo backend "with an adapter": completions carry the adapter path, so a test sees
    which LoRA module answered."""

    def __init__(self, adapter: str) -> None:
        from matsql.backends.base import GenerationStats

        self.adapter = adapter
        self.name = f"echo+{adapter}"
        self.stats = GenerationStats()

    def generate(self, prompts: list[ChatPrompt], n: int = 1, **kw: Any) -> list[list[str]]:
        from matsql.backends.echo import echo_text

        self.stats.calls += 1
        return [[f"lora:{self.adapter}:{echo_text(p, s)}" for s in range(n)] for p in prompts]


def make_server_backend(spec: str, **kwargs: Any) -> Backend:
    """``echo`` gives the fake EchoBackend (``AdapterEcho`` with an adapter); anything else a
    LocalBackend on that model spec."""
    if spec == "echo":
        if kwargs.get("adapter"):
            return AdapterEcho(kwargs["adapter"])
        from matsql.backends.echo import EchoBackend

        return EchoBackend()
    from matsql.backends.transformers_local import LocalBackend

    return LocalBackend(spec, **kwargs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m matsql.backends.server", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--model", required=True, help="model spec (dir, .gguf, hub id, alias) or 'echo'")
    ap.add_argument("--adapter", default=None, help="PEFT adapter folder to serve on top of the model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    for f in FAULTS:
        ap.add_argument(
            f"--{f.replace('_', '-')}-rate", type=float, default=0.0, dest=f, help=f"fault: {f} probability"
        )
    ap.add_argument("--slow-s", type=float, default=5.0)
    ap.add_argument("--drip-s", type=float, default=0.05, help="seconds between dripped bytes")
    ap.add_argument("--reject-marker", default=None, help="HTTP 400 for prompts containing this text")
    ap.add_argument("--drip-marker", default=None, help="drip the answers of prompts containing this text")
    ap.add_argument(
        "--lora-modules",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="serve adapter PATH on the base model under the name NAME (as vllm serve does)",
    )
    ap.add_argument(
        "--allow-runtime-lora",
        action="store_true",
        help="serve POST /v1/load_lora_adapter (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
    )
    ap.add_argument("--fault-seed", type=int, default=0)
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs = (
        {}
        if a.model == "echo"
        else {"adapter": a.adapter, "device": a.device, "dtype": a.dtype, "batch_size": a.batch_size}
    )
    backend = make_server_backend(a.model, **kwargs)
    modules: dict[str, tuple[str, Backend]] = {}
    for item in a.lora_modules:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"--lora-modules expects NAME=PATH, got {item!r}")
        modules[name] = (path, make_server_backend(a.model, **(kwargs | {"adapter": path})))
    faults = FaultConfig(
        **{f: getattr(a, f) for f in FAULTS},
        slow_s=a.slow_s,
        drip_s=a.drip_s,
        seed=a.fault_seed,
        reject_marker=a.reject_marker,
        drip_marker=a.drip_marker,
    )
    server = OpenAIServer(
        backend,
        a.host,
        a.port,
        model_name=a.served_model_name or a.model,
        faults=faults,
        lora_modules=modules,
        load_adapter=(lambda path: make_server_backend(a.model, **(kwargs | {"adapter": path})))
        if a.allow_runtime_lora
        else None,
    )
    print(f"matsql server listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
