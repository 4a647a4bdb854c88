"""`matsql demo`: the packaged demo plan, with each stage's progress on screen.

Stages run as usual (their full output goes to ``RUN/logs/<stage>.log``); this wrapper follows
each log while its stage runs and shows one line per stage: a bar for rollouts (questions) and
training (optimizer steps), the elapsed time, and at the end the time the stage took.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from matsql.evaluate.portable import portable_path

STUDY_DIR = "results/study-spider"
STUDY_COMMAND = "matsql experiment run experiments/study-spider.yaml"  # on GPUs; see its README

# "rollout 12/24 questions 31s" (rollout/runner.py writes it when its output is not a terminal)
_ROLLOUT = re.compile(r"^rollout (\d+)/(\d+) questions")
# the trainer's tqdm bar has no description: " 35%|###5      | 7/20 [00:41<01:16, ...]"
_STEPS = re.compile(r"^\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[")
_SELECT = re.compile(r"^select (\d+)/(\d+)")


def parse_progress(line: str) -> tuple[str, int, int] | None:
    """(unit, done, total) from one line of a stage's output, or None."""
    for unit, rx in (("questions", _ROLLOUT), ("steps", _STEPS), ("questions", _SELECT)):
        m = rx.search(line)
        if m:
            return unit, int(m.group(1)), int(m.group(2))
    return None


@dataclass
class StageTime:
    name: str
    seconds: float
    ok: bool


class ProgressExecutor:
    """Wraps an executor: the same stages, with a live line per running stage on the console.

    Thread-safe: under ``run_plan(jobs=N)`` several stages run at once, and they share one live
    display (rich allows one per console), started with the first running stage and stopped
    with the last.
    """

    def __init__(self, inner, console: Console | None = None, poll_s: float = 0.5):
        self.inner = inner
        self.console = console or Console(stderr=True)
        self.poll_s = poll_s
        self.times: list[StageTime] = []
        self._lock = threading.Lock()
        self._running = 0
        self._progress = Progress(
            TextColumn("  [bold]{task.fields[stage]}[/bold]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    def set_priorities(self, rank: dict[str, int]) -> None:
        if hasattr(self.inner, "set_priorities"):
            self.inner.set_priorities(rank)

    def run(self, stage, log: Path, on_start=None) -> None:
        log = Path(log)
        start_size = log.stat().st_size if log.exists() else 0
        stop = threading.Event()
        progress = self._progress
        with self._lock:
            if self._running == 0:
                progress.start()
            self._running += 1
            task = progress.add_task(stage.name, total=None, stage=stage.name, unit="")

        def follow() -> None:
            pos = start_size
            buf = ""
            while not stop.is_set():
                stop.wait(self.poll_s)
                try:
                    with log.open("rb") as f:
                        f.seek(pos)
                        chunk = f.read()
                except FileNotFoundError:
                    continue
                pos += len(chunk)
                buf += chunk.decode("utf-8", errors="replace")
                *lines, buf = re.split(r"[\r\n]", buf)
                for line in lines:
                    got = parse_progress(line)
                    if got is not None:
                        unit, done, total = got
                        progress.update(task, completed=done, total=total, unit=unit)

        t0 = time.perf_counter()
        watcher = threading.Thread(target=follow, daemon=True)
        ok = False
        watcher.start()
        try:
            self.inner.run(stage, log, on_start=on_start)
            ok = True
        finally:
            stop.set()
            watcher.join()
            dt = time.perf_counter() - t0
            mark = "[green]done[/green]" if ok else "[red]failed[/red]"
            with self._lock:
                self.times.append(StageTime(stage.name, dt, ok))
                progress.remove_task(task)
                self.console.print(f"  {mark} {stage.name} in {dt:.1f} s (log: {portable_path(log)})")
                self._running -= 1
                if self._running == 0:
                    progress.stop()
