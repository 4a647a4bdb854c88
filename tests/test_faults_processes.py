"""Issue 17: no process outlives its run. A rollout SIGKILLed while its SQLite workers chew on
model-written CPU bombs leaves no matsql process behind within 5 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.backends.base import GenerationStats
from matsql.backends.server import OpenAIServer

BOMB = "Final SQL query:\n```sql\nWITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c\n```"


class BombBackend:
    name = "bomb"

    def __init__(self) -> None:
        self.stats = GenerationStats()

    def generate(self, prompts, n=1, **kw):
        return [[BOMB] * n for _ in prompts]


def processes_with(token: str) -> dict[int, str]:
    """pid -> command line of every process whose environment carries ``token``."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if token.encode() not in f.read():
                    continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                out[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")
def test_sigkill_of_a_rollout_leaves_no_process(tmp_path: Path) -> None:
    from matsql.benchmarks.commands import data_app

    data = tmp_path / "minibench"
    assert CliRunner().invoke(data_app, ["minibench", str(data)]).exit_code == 0
    server = OpenAIServer(BombBackend(), model_name="bomb")
    server.start_in_thread()
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        f"defaults: {{backend: openai, base_url: '{server.url}/v1', model: bomb}}\n"
        "agents: {planner: {}, val-sel: {}, val-cond: {}, fixer: {}}\n"
    )
    token = f"matsql-test-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "matsql.cli",
            "rollout",
            "-b",
            "minibench",
            "--data",
            str(data),
            "-a",
            str(agents),
            "-o",
            str(tmp_path / "r.jsonl"),
            "--limit",
            "4",
            "--k",
            "2",
            "--exec-timeout",
            "120",
        ],
        env=os.environ | {"MATSQL_KILL_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        busy: list[int] = []
        while time.monotonic() < deadline and not busy:  # until a worker runs a bomb
            time.sleep(0.2)
            assert proc.poll() is None, "the rollout ended before it could be killed"
            busy = [
                p
                for p, cmd in processes_with(token).items()
                if "matsql.sql.worker" in cmd and cpu_seconds(p) > 0.5
            ]
        assert busy, f"no busy SQLite worker appeared: {processes_with(token)}"
        family = processes_with(token)
        assert len(family) >= 2  # the rollout and its workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        gone_by = time.monotonic() + 5
        left = processes_with(token)
        while left and time.monotonic() < gone_by:
            time.sleep(0.1)
            left = processes_with(token)
        assert left == {}, f"left behind after SIGKILL: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in processes_with(token):  # never leak into other tests, even on failure
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        server.shutdown()
        server.server_close()
