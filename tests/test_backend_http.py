"""OpenAI-compatible client against the real server process: parity with the local backend,
and exactly-n results under injected faults (500, 429, dropped connections, timeouts, bad JSON)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from matsql.backends.base import Backend, ChatPrompt
from matsql.backends.chat import derive_seed
from matsql.backends.echo import EchoBackend, echo_text
from matsql.backends.openai_http import BackendError, MalformedResponse, OpenAIBackend, parse_choices
from matsql.backends.server import BadRequest, FaultConfig, chat_prompt_from_request

PROMPTS = [
    ChatPrompt.of(
        [{"role": "user", "content": f"question {i}: how many rows in table t{i}?"}],
        prefix="SELECT." if i % 3 == 0 else "",
    )
    for i in range(24)
]


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str

    def log(self) -> list[dict]:
        return httpx.get(f"{self.url}/debug/requests").json()


def start_server(*args: str) -> Iterator[Server]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "matsql.backends.server", "--port", "0", "--log-level", "WARNING", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = ""
    timer = threading.Timer(120, proc.kill)  # a server that never comes up fails the test, not hangs it
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    if "listening on" not in line:
        proc.kill()
        pytest.fail(f"server did not start (args {args}); said {line!r}")
    try:
        yield Server(proc, line.rsplit(" ", 1)[1].strip())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tiny_server(tiny_chat_model_dir: Path) -> Iterator[Server]:
    pytest.importorskip("torch")
    yield from start_server(
        "--model", str(tiny_chat_model_dir), "--device", "cpu", "--served-model-name", "tiny"
    )


FAULTY = {"error500": 0.1, "rate_limit": 0.05, "drop": 0.05, "slow": 0.05, "malformed": 0.1, "short": 0.1}


@pytest.fixture(scope="module")
def faulty_echo() -> Iterator[Server]:
    flags = [a for f, r in FAULTY.items() for a in (f"--{f.replace('_', '-')}-rate", str(r))]
    yield from start_server("--model", "echo", "--slow-s", "1.5", "--fault-seed", "11", *flags)


def client(url: str, **kw) -> OpenAIBackend:
    defaults = {"timeout_s": 10.0, "backoff_s": 0.01, "max_backoff_s": 0.05, "max_retries": 3}
    return OpenAIBackend(url + "/v1", kw.pop("model", "tiny"), **(defaults | kw))


# ------------------------------------------------------------------ parity with LocalBackend


@pytest.fixture(scope="module")
def local(tiny_chat_model_dir: Path):
    from matsql.backends.transformers_local import LocalBackend

    return LocalBackend(str(tiny_chat_model_dir), device="cpu", batch_size=8)


def test_chat_greedy_matches_local_backend(tiny_server: Server, local) -> None:
    with client(tiny_server.url) as c:
        assert isinstance(c, Backend)
        got = c.generate(PROMPTS[:6], n=2, max_tokens=8)
        assert got == local.generate(PROMPTS[:6], n=2, max_tokens=8)
        assert c.stats.prompt_tokens == sum(len(local.encode(p)) for p in PROMPTS[:6])
    assert len({g[0] for g in got}) > 1


def test_completions_mode_matches_local_backend(tiny_server: Server, local) -> None:
    with client(tiny_server.url, mode="completions", tokenizer=local.tokenizer) as c:
        body = c.request_body(PROMPTS[0], 1, 0.0, 8, None, 0)
        assert body["prompt"] == local.render(PROMPTS[0]) and body["add_special_tokens"] is False
        assert c.generate(PROMPTS[:4], max_tokens=8) == local.generate(PROMPTS[:4], max_tokens=8)


def test_stop_strings_over_http(tiny_server: Server, local) -> None:
    full = local.generate(PROMPTS[:6], max_tokens=8)
    k, text = next((i, o[0]) for i, o in enumerate(full) if len(o[0]) >= 6)
    stop = [text[3:5]]
    with client(tiny_server.url) as c:
        assert c.generate([PROMPTS[k]], max_tokens=8, stop=stop) == [[text[: text.find(stop[0])]]]


def test_models_and_health(tiny_server: Server) -> None:
    assert httpx.get(f"{tiny_server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{tiny_server.url}/v1/models").json()["data"][0]["id"] == "tiny"


# ------------------------------------------------------------------ faults: exactly n, in order


def expected(prompts: list[ChatPrompt], n: int) -> list[list[str]]:
    return [[echo_text(p, s) for s in range(n)] for p in prompts]


def test_faults_never_lose_or_duplicate_samples(faulty_echo: Server) -> None:
    before = len(faulty_echo.log())
    with client(faulty_echo.url, model="echo", timeout_s=0.5, max_retries=25, concurrency=6) as c:
        assert c.generate(PROMPTS, n=3) == expected(PROMPTS, 3)
        retries = c.stats.extra.get("retries", 0)
    log = faulty_echo.log()[before:]
    faults = Counter(e["fault"] for e in log)
    assert set(faults) == {None, *FAULTY}  # every kind of fault injected here was hit
    assert faults[None] == len(PROMPTS)  # one clean answer per prompt, no more
    assert retries == len(log) - len(PROMPTS)  # each faulted request was retried exactly once
    clean = Counter(e["digest"] for e in log if e["fault"] is None)
    assert sorted(clean.values()) == [1] * len(PROMPTS)


def test_faults_from_threads_and_inside_a_running_loop(faulty_echo: Server) -> None:
    with client(faulty_echo.url, model="echo", timeout_s=0.5, max_retries=25, concurrency=4) as c:
        chunks = [PROMPTS[i::4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda ps: c.generate(ps, n=2), chunks))
        assert outs == [expected(ps, 2) for ps in chunks]

        async def inside_loop() -> list[list[str]]:
            return c.generate(PROMPTS[:3], n=1)

        assert asyncio.run(inside_loop()) == expected(PROMPTS[:3], 1)


@pytest.fixture(scope="module")
def failing_echo() -> Iterator[Server]:
    yield from start_server("--model", "echo", "--error500-rate", "1.0")


def test_retries_exhausted_raise_and_stop(failing_echo: Server) -> None:
    """The first prompt to use up its 3 attempts raises and cancels the call's other request:
    that one made 2 or 3 attempts by then, by the jitter of its backoff (its second attempt
    always comes before the first prompt's third), and none after."""
    import time

    before = len(failing_echo.log())
    with (
        client(failing_echo.url, model="echo", max_retries=2) as c,
        pytest.raises(BackendError, match="after 3 attempts"),
    ):
        c.generate(PROMPTS[:2], n=2)
    time.sleep(0.2)  # a request in flight when the call raised reaches the log
    sent = len(failing_echo.log()) - before
    assert sent in (3 + 2, 3 + 3)
    time.sleep(0.3)  # several times the longest backoff (0.05 s): a request not cancelled would show
    assert len(failing_echo.log()) - before == sent


@pytest.fixture(scope="module")
def clean_echo() -> Iterator[Server]:
    yield from start_server("--model", "echo")


def test_client_error_is_not_retried(clean_echo: Server) -> None:
    before = len(clean_echo.log())
    bad = ChatPrompt((("assistant", "no user turn"),), "")
    with client(clean_echo.url, model="echo", max_retries=5) as c:
        with pytest.raises(BackendError, match="HTTP 400"):
            c.generate([PROMPTS[0], bad])
        assert c.stats.extra.get("retries", 0) == 0
    assert [e["status"] for e in clean_echo.log()[before:]].count(400) == 1


def test_seed_is_per_prompt_content_not_position() -> None:
    c = OpenAIBackend("http://unused", "m")
    a = c.request_body(PROMPTS[1], 2, 1.0, 16, ["\n"], seed=5)
    b = c.request_body(PROMPTS[2], 2, 1.0, 16, ["\n"], seed=5)
    assert a["seed"] == derive_seed(5, PROMPTS[1], bits=31) != b["seed"]
    assert c.request_body(PROMPTS[1], 2, 1.0, 16, None, seed=6)["seed"] != a["seed"]
    assert "continue_final_message" not in a and a["stop"] == ["\n"]
    p = c.request_body(PROMPTS[0], 1, 0.0, 16, None, 0)
    assert p["messages"][-1] == {"role": "assistant", "content": "SELECT."}
    assert (p["continue_final_message"], p["add_generation_prompt"]) == (True, False)


# ------------------------------------------------------------------ pure pieces


def choice(i: int, text: str | None) -> dict:
    return {"index": i, "message": {"role": "assistant", "content": text}}


@pytest.mark.parametrize(
    ("body", "n", "texts"),
    [
        ({"choices": [choice(0, "a"), choice(1, "b")]}, 2, ["a", "b"]),
        ({"choices": [choice(1, "b"), choice(0, "a")]}, 2, ["a", "b"]),
        ({"choices": [{"message": {"content": "x"}}]}, 1, ["x"]),
    ],
)
def test_parse_choices_ok(body: dict, n: int, texts: list[str]) -> None:
    assert parse_choices(json.dumps(body).encode(), n, "chat")[0] == texts


@pytest.mark.parametrize(
    ("raw", "n"),
    [
        (b'{"choices": [', 1),
        (b"[]", 1),
        (json.dumps({"error": "x"}).encode(), 1),
        (json.dumps({"choices": [choice(0, "a")]}).encode(), 2),
        (json.dumps({"choices": [choice(0, "a"), choice(0, "a")]}).encode(), 2),
        (json.dumps({"choices": [choice(0, None)]}).encode(), 1),
    ],
)
def test_parse_choices_rejects(raw: bytes, n: int) -> None:
    with pytest.raises(MalformedResponse):
        parse_choices(raw, n, "chat")


def test_server_request_mapping() -> None:
    req = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "SELECT. "}],
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    assert chat_prompt_from_request(req) == ChatPrompt((("user", "q"),), "SELECT. ")
    assert chat_prompt_from_request(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    ).messages == (("user", "hi"),)
    for bad in (
        {"messages": []},
        {"messages": [{"role": "user", "content": "q"}], "continue_final_message": True},
        req | {"add_generation_prompt": True},
        req | {"continue_final_message": False},
    ):
        with pytest.raises(BadRequest):
            chat_prompt_from_request(bad)


def test_fault_schedule_is_deterministic() -> None:
    f = FaultConfig(error500=0.3, malformed=0.2, seed=4)
    draws = [f.draw(k) for k in range(1, 400)]
    assert draws == [FaultConfig(error500=0.3, malformed=0.2, seed=4).draw(k) for k in range(1, 400)]
    c = Counter(draws)
    assert 0.2 < c["error500"] / 399 < 0.4 and 0.1 < c["malformed"] / 399 < 0.3
    with pytest.raises(ValueError, match="sum to <= 1"):
        FaultConfig(error500=0.7, drop=0.5)


def test_echo_backend_encodes_prompt_and_sample() -> None:
    out = EchoBackend().generate(PROMPTS[:2], n=2)
    assert out[0][0] != out[0][1] != out[1][1] and out[0][1].endswith(":1")


def test_echo_canned_replies_are_a_function_of_prompt_sample_and_seed() -> None:
    """An agents file's ``replies:`` make the echo backend answer with those texts (a dry run with
    SQL that runs and verdicts of both kinds): the same prompt, sample and seed give the same
    text, another seed a new draw, and the draws cover the replies."""
    from matsql.backends.registry import make_backend

    replies = ["Conclude: correct", "Conclude: incorrect", "```sql\nSELECT 3\n```"]
    b = make_backend({"backend": "echo", "replies": replies}, agent="val-sel")
    out = b.generate(PROMPTS[:2], n=40, seed=0)
    assert out == make_backend({"backend": "echo", "replies": replies}).generate(PROMPTS[:2], n=40, seed=0)
    assert out != b.generate(PROMPTS[:2], n=40, seed=1)
    assert {t for row in out for t in row} == set(replies)
    assert b.generate(PROMPTS[:1], n=2, stop=["\n"], seed=0)[0][0] in {
        "Conclude: correct",
        "Conclude: incorrect",
        "```sql",
    }
    with pytest.raises(ValueError, match="bad echo backend settings"):
        make_backend({"backend": "echo", "replies": []}, agent="val-sel")


# ------------------------------------------------------------------ issue 17: deadlines, rejects, text


@pytest.fixture()
def inproc() -> Iterator:
    """An in-process echo server with marker faults: 'REJECT' -> HTTP 400, 'DRIP' -> dripped."""
    from matsql.backends.server import OpenAIServer

    server = OpenAIServer(
        EchoBackend(),
        model_name="echo",
        faults=FaultConfig(reject_marker="REJECT", drip_marker="DRIP", drip_s=0.05),
    )
    with server.running():
        yield server


def _p(text: str) -> ChatPrompt:
    return ChatPrompt.of([{"role": "user", "content": text}])


def test_total_deadline_stops_a_dripping_server(inproc) -> None:
    """Each dripped byte comes well within a read timeout; the total deadline still ends it."""
    import time

    with client(inproc.url, model="echo", timeout_s=0.5, max_retries=1) as c:
        assert c.generate([_p("fine")]) == [[echo_text(_p("fine"), 0)]]
        start = time.monotonic()
        with pytest.raises(BackendError, match="deadline"):
            c.generate([_p("DRIP me")])
        assert time.monotonic() - start < 0.5 * 2 + 1.0  # 2 attempts of 0.5 s, plus backoff
    assert sum(e["fault"] == "drip" for e in inproc.request_log) == 2


def test_rejected_prompt_is_a_permanent_failure(inproc) -> None:
    from matsql.backends.openai_http import RequestRejected

    with client(inproc.url, model="echo", max_retries=3) as c:
        with pytest.raises(RequestRejected, match="HTTP 400") as err:
            c.generate([_p("REJECT this")])
        assert err.value.permanent
        assert c.stats.extra.get("retries", 0) == 0


class _Surrogates:
    name = "surrogates"

    def __init__(self) -> None:
        from matsql.backends.base import GenerationStats

        self.stats = GenerationStats()

    def generate(self, prompts, n=1, **kw):
        return [["bad \ud800 text\x00"] * n for _ in prompts]


def test_surrogate_in_a_completion_is_sanitised_and_can_be_sent_again() -> None:
    from matsql.backends.server import OpenAIServer

    server = OpenAIServer(_Surrogates(), model_name="s")
    with server.running():
        with client(server.url, model="s") as c:
            ((text,),) = c.generate([_p("hi")])
            assert text == "bad \ufffd text\ufffd"
            again = c.generate([_p(text)])  # a sanitised text goes into the next prompt
            assert again == [["bad \ufffd text\ufffd"]]


# ------------------------------------------------------------------ issue 15 item 5: adapters -> LoRA modules


@pytest.fixture()
def lora_server() -> Iterator:
    from matsql.backends.server import AdapterEcho, OpenAIServer

    modules = {
        "val-sel-collab": ("runs/collab/val-sel", AdapterEcho("runs/collab/val-sel")),
        "val-sel-indep": ("runs/indep/val-sel", AdapterEcho("runs/indep/val-sel")),
    }
    server = OpenAIServer(EchoBackend(), model_name="validator", lora_modules=modules)
    with server.running():
        yield server


def _team_backend(url: str, adapter: str | None, **entry):
    """The path of `matsql rollout -a AGENTS --adapter val-sel=PATH`: team file, override, registry."""
    from matsql.backends.registry import make_backend
    from matsql.team import apply_adapters, parse_team

    team = parse_team(
        {"agents": {"val-sel": {"backend": "openai", "base_url": url + "/v1", "model": "validator", **entry}}}
    )
    if adapter is not None:
        team = apply_adapters(team, [f"val-sel={adapter}"])
    return make_backend(team["val-sel"].backend, agent="val-sel")


@pytest.mark.parametrize(
    "mapping", [{"val-sel-collab": "runs/collab/val-sel"}, None], ids=["lora_modules", "by-root"]
)
def test_a_served_lora_module_is_used_for_an_adapter(lora_server, mapping) -> None:
    entry = {"lora_modules": mapping} if mapping else {}
    b = _team_backend(lora_server.url, "runs/collab/val-sel", **entry)
    assert b.check_served() == "val-sel-collab"
    ((text,),) = b.generate([_p("q")])
    assert text.startswith("lora:runs/collab/val-sel:")
    assert lora_server.request_log[-1]["model"] == "val-sel-collab"
    b.close()


def test_no_adapter_goes_to_the_base_model(lora_server) -> None:
    b = _team_backend(lora_server.url, None)
    ((text,),) = b.generate([_p("q")])
    assert text == echo_text(_p("q"), 0)
    assert lora_server.request_log[-1]["model"] == "validator"
    b.close()


def test_an_unserved_adapter_is_refused(lora_server) -> None:
    from matsql.backends.openai_http import AdapterNotServed

    b = _team_backend(lora_server.url, "runs/other/val-sel")
    with pytest.raises(AdapterNotServed, match=r"runs/other/val-sel is not served.*val-sel-collab"):
        b.generate([_p("q")])
    mapped = _team_backend(lora_server.url, "runs/x", lora_modules={"val-sel-x": "runs/x"})
    with pytest.raises(
        AdapterNotServed, match=r"'val-sel-x'.*does not list it.*--lora-modules val-sel-x=runs/x"
    ):
        mapped.check_served()
    assert not any(e["path"] == "/v1/chat/completions" for e in lora_server.request_log)  # nothing was sent


def test_server_cli_serves_lora_modules() -> None:
    for srv in start_server("--model", "echo", "--served-model-name", "base", "--lora-modules", "m1=/a/b"):
        models = httpx.get(f"{srv.url}/v1/models").json()["data"]
        assert [(m["id"], m["root"], m["parent"]) for m in models] == [
            ("base", None, None),
            ("m1", "/a/b", "base"),
        ]
        r = httpx.post(
            f"{srv.url}/v1/chat/completions",
            json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 404


# ------------------------------------------------------------------ one served engine per plan: adapters loaded at run time


def _adapter(folder: Path, weights: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return str(folder)


@pytest.fixture()
def runtime_lora_server() -> Iterator:
    from matsql.backends.server import AdapterEcho, OpenAIServer

    server = OpenAIServer(EchoBackend(), model_name="validator", load_adapter=AdapterEcho)
    with server.running():
        yield server


def test_an_adapter_is_loaded_at_run_time_under_its_weights_digest(runtime_lora_server, tmp_path) -> None:
    """`load_adapters: true`: the adapter is loaded once (POST /v1/load_lora_adapter) under its
    folder name + weights digest and answers; new weights in the same folder are a new module,
    never the old weights under the old name."""
    from matsql.backends.openai_http import runtime_lora_name

    path = _adapter(tmp_path / "sft-val-sel", b"weights-1")
    b = _team_backend(runtime_lora_server.url, path, load_adapters=True)
    name = b.check_served()
    assert name == runtime_lora_name(path) and name.startswith("sft-val-sel-")
    ((text,),) = b.generate([_p("q")])
    assert text.startswith(f"lora:{path}:")
    assert runtime_lora_server.request_log[-1]["model"] == name
    again = _team_backend(runtime_lora_server.url, path, load_adapters=True)  # the next stage's process
    assert again.check_served() == name
    loads = [e for e in runtime_lora_server.request_log if e["path"] == "/v1/load_lora_adapter"]
    assert [e["status"] for e in loads] == [200]  # listed already: not loaded twice
    _adapter(tmp_path / "sft-val-sel", b"weights-2")  # the stage ran again into the same folder
    retrained = _team_backend(runtime_lora_server.url, path, load_adapters=True)
    assert retrained.check_served() not in (name, None)
    assert len(runtime_lora_server.lora_modules) == 2
    for x in (b, again, retrained):
        x.close()


def test_runtime_loading_is_refused_clearly(lora_server, runtime_lora_server, tmp_path) -> None:
    """A server without the route (no VLLM_ALLOW_RUNTIME_LORA_UPDATING) and a folder that holds no
    adapter are refused before any completion request; without load_adapters nothing is loaded."""
    from matsql.backends.openai_http import AdapterNotServed

    path = _adapter(tmp_path / "a", b"w")
    b = _team_backend(lora_server.url, path, load_adapters=True)
    with pytest.raises(AdapterNotServed, match=r"HTTP 404.*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        b.generate([_p("q")])
    with pytest.raises(AdapterNotServed, match=r"no adapter_config.json"):
        _team_backend(runtime_lora_server.url, str(tmp_path / "empty"), load_adapters=True).check_served()
    with pytest.raises(AdapterNotServed, match=r"is not served"):
        _team_backend(runtime_lora_server.url, path).check_served()
    for srv in (lora_server, runtime_lora_server):
        assert not any(e["path"] == "/v1/chat/completions" for e in srv.request_log)
    assert not runtime_lora_server.lora_modules


def test_server_cli_loads_adapters_at_run_time_only_when_allowed(tmp_path) -> None:
    path = _adapter(tmp_path / "x", b"w")
    body = {"lora_name": "x1", "lora_path": path}
    for srv in start_server("--model", "echo", "--allow-runtime-lora"):
        assert httpx.post(f"{srv.url}/v1/load_lora_adapter", json=body).status_code == 200
        again = httpx.post(f"{srv.url}/v1/load_lora_adapter", json=body)
        assert again.status_code == 400 and "already been loaded" in again.text
        missing = httpx.post(
            f"{srv.url}/v1/load_lora_adapter", json={"lora_name": "y", "lora_path": str(tmp_path)}
        )
        assert missing.status_code == 404
        assert [m["id"] for m in httpx.get(f"{srv.url}/v1/models").json()["data"]] == ["echo", "x1"]
    for srv in start_server("--model", "echo"):
        assert httpx.post(f"{srv.url}/v1/load_lora_adapter", json=body).status_code == 404
