"""A small OpenAI-compatible HTTP server over any Backend (stdlib only).

Serves ``POST /v1/chat/completions`` (honouring vLLM's ``continue_final_message``),
``POST /v1/completions`` when the backend can take rendered prompt texts (``LocalBackend``),
``GET /v1/models``, ``GET /health`` and ``GET /debug/requests`` (the request log). It lets
several processes share one loaded model, and lets tests exercise the HTTP client against
real sockets, with deterministic fault injection (500s, 429s, dropped connections, slow
answers past the client's timeout, malformed or short bodies).

Requests run one at a time on the backend (generic backends need not be thread-safe), so
throughput comes from the prompts and ``n`` inside a request; use vLLM for serving at scale.

    python -m matsql.backends.server --model qwen2.5-coder-0.5b-instruct --port 8000
    python -m matsql.backends.server --model echo --port 0 --fail-rate 0.3   # prints the port
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
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from matsql.backends.base import Backend, ChatPrompt
from matsql.backends.chat import prompt_digest

log = logging.getLogger(__name__)

FAULTS = ("error500", "rate_limit", "drop", "slow", "malformed", "short")


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
    slow_s: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        total = sum(getattr(self, f) for f in FAULTS)
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
    ) -> None:
        super().__init__((host, port), _Handler)
        self.backend = backend
        self.model_name = model_name or backend.name
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

    def run(self, kind: str, req: dict[str, Any]) -> tuple[list[str], dict[str, int], str]:
        """Run one request on the backend: (texts, usage, prompt digest)."""
        args = sampling_args(req)
        if kind == "chat":
            prompt = chat_prompt_from_request(req)
            digest = prompt_digest(prompt)
            call = lambda: self.backend.generate([prompt], **args)[0]  # noqa: E731
        else:
            text = req.get("prompt")
            if not isinstance(text, str):
                raise BadRequest("'prompt' must be one string")
            gen_text = getattr(self.backend, "generate_text", None)
            if gen_text is None:
                raise BadRequest(
                    f"backend {self.backend.name} does not take raw prompts; use /v1/chat/completions"
                )
            digest = prompt_digest(text)
            call = lambda: gen_text([text], **args)[0]  # noqa: E731
        with self.backend_lock:
            before = (self.backend.stats.prompt_tokens, self.backend.stats.completion_tokens)
            texts = call()
            usage = {
                "prompt_tokens": self.backend.stats.prompt_tokens - before[0],
                "completion_tokens": self.backend.stats.completion_tokens - before[1],
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
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.server.model_name, "object": "model", "owned_by": "matsql"}],
                },
            )
        elif self.path == "/debug/requests":
            self._json(200, list(self.server.request_log))
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        kinds = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
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
            texts, usage, entry["digest"] = self.server.run(kind, req)
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
        self._send(200, payload)


def make_server_backend(spec: str, **kwargs: Any) -> Backend:
    """``echo`` gives the fake EchoBackend; anything else a LocalBackend on that model spec."""
    if spec == "echo":
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
    faults = FaultConfig(**{f: getattr(a, f) for f in FAULTS}, slow_s=a.slow_s, seed=a.fault_seed)
    server = OpenAIServer(backend, a.host, a.port, model_name=a.served_model_name or a.model, faults=faults)
    print(f"matsql server listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
