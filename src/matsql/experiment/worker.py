"""A stage process kept between stages (``experiment run --warm``), and its handle.

Why: a generation stage started as a new process pays a fixed cost before its first token. On
the lent GPU (lease 3, ``eval-planner-trn-s0``) that was 20 s of process start and imports and
20 s of vLLM engine start, against 18 s of generation; over the v2 study's remaining generation
stages it is about 40% of the card time left (``results/study-spider-v2/PLAN.md``). A worker
runs ``matsql`` commands one after another in one process, so imports happen once and the
vLLM engine (``matsql.backends.registry``'s process-wide engines) starts once per worker;
``registry.begin_stage`` makes a kept engine start each stage as a new one would (empty prefix
cache, adapters read afresh).

Protocol: the worker reads one JSON object per line on stdin, ``{"argv": [...], "token": T}``,
runs ``matsql ARGV`` in process with its output on its own stdout/stderr, then writes
``MARK T RC`` and a newline to stdout, RC being the exit code a ``python -m matsql.cli ARGV``
process would have had. It exits when stdin closes; the card's memory is free only then, which
is how the executor makes room for a training stage.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Sequence

MARK = "\x1fmatsql-worker-done "


def run_command(argv: Sequence[str]) -> int:
    """``matsql ARGV`` in this process; its exit code, as its own process would have ended."""
    from matsql.cli import app

    try:
        app(args=list(argv), prog_name="matsql")
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except Exception:  # a crash ends a stage, not the worker: its process would have printed this
        traceback.print_exc()
        return 1
    return 0


def _flush() -> None:
    """Everything written so far reaches the pipe before the end mark: Python's buffers and C's
    (vLLM's compiled parts write through stdio)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no libc to ask
        pass


def main() -> int:
    import logging

    from matsql.backends.registry import begin_stage
    from matsql.cli import configure_logging

    configure_logging()  # the stage's own lines and this one, in the format of every stage log
    log = logging.getLogger("matsql.worker")
    done = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        kept = begin_stage()
        log.info(
            "warm worker pid %d: stage %d of this process; kept from earlier stages: %s",
            os.getpid(),
            done + 1,
            "; ".join(kept) or "nothing",
        )
        rc = run_command(req["argv"])
        done += 1
        _flush()
        os.write(1, f"{MARK}{req['token']} {rc}\n".encode())
    return 0


class Worker:
    """The executor's side of one worker: a ``python -m matsql.experiment.worker`` process on one
    card (its environment: that card and its memory share, fixed for its life)."""

    def __init__(self, card: str, env: dict[str, str]) -> None:
        self.card = card
        self.stages = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "matsql.experiment.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, argv: Sequence[str], sink: Callable[[str], None]) -> int:
        """Run ``matsql ARGV`` in the worker, passing each output line to ``sink``; its exit code.
        A worker that dies first gives its own exit code (or -1), never 0."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        token = uuid.uuid4().hex
        try:
            self.proc.stdin.write(json.dumps({"argv": list(argv), "token": token}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died between stages: its output and exit code tell why
        mark = MARK + token
        self.stages += 1
        for line in self.proc.stdout:
            if mark in line:
                head, tail = line.split(mark, 1)
                if head:
                    sink(head + "\n")
                return int(tail.split()[0])
            sink(line)
        return self.proc.wait() or -1

    def stop(self, timeout: float = 60.0) -> str:
        """End the worker and wait for it: its card memory is free when this returns. Returns
        what it wrote after its last stage (shutdown lines), which would otherwise be lost."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)  # closes stdin, reads to the end
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        except (BrokenPipeError, OSError, ValueError):  # already gone
            self.proc.wait()
            out = ""
        return out or ""


if __name__ == "__main__":  # pragma: no cover - run by Worker
    sys.exit(main())
