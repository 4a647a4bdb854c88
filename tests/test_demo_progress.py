"""`matsql demo` shows each stage's progress (rollout questions, training steps) and its time."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from matsql.experiment.demo import ProgressExecutor, parse_progress


def test_parse_progress_reads_rollout_and_trainer_lines() -> None:
    assert parse_progress("rollout 12/24 questions 31s") == ("questions", 12, 24)
    assert parse_progress(" 35%|###5      | 7/20 [00:41<01:16,  3.1s/it]") == ("steps", 7, 20)
    assert parse_progress("  5%|▌         | 2/40 [02:59<59:20, 93.70s/it]") == ("steps", 2, 40)
    # bars with a description are not the trainer's (model loading, dataset maps)
    assert (
        parse_progress("Converting and de-quantizing GGUF tensors...:  17%|█▋ | 45/272 [00:00<00:03]") is None
    )
    assert parse_progress("Truncating train dataset: 100%|██████████| 300/300 [00:00<00:00]") is None
    assert parse_progress("{'loss': '1.085'}") is None


class _Writes:
    """A stand-in executor: writes progress lines to the stage log, as a stage's output would."""

    def __init__(self, lines: list[str], fail: bool = False):
        self.lines, self.fail = lines, fail

    def run(self, stage, log: Path, on_start=None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            for line in self.lines:
                f.write(line)
                f.flush()
                time.sleep(0.03)
        time.sleep(0.1)
        if self.fail:
            raise RuntimeError("stage failed")


def test_progress_executor_times_each_stage_and_reports_it(tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    ex = ProgressExecutor(
        _Writes(["rollout 8/24 questions 3s\n", " 50%|#####  | 1/2 [00:01<00:01]\r"]), console, 0.01
    )
    ex.run(SimpleNamespace(name="rollout-sft"), tmp_path / "logs" / "rollout-sft.log")
    assert [t.name for t in ex.times] == ["rollout-sft"] and ex.times[0].ok and ex.times[0].seconds > 0.05
    assert "done rollout-sft in" in buf.getvalue()
    failing = ProgressExecutor(_Writes(["x\n"], fail=True), console, 0.01)
    with pytest.raises(RuntimeError):
        failing.run(SimpleNamespace(name="sft-fixer"), tmp_path / "logs" / "sft-fixer.log")
    assert failing.times[0].ok is False and "failed sft-fixer" in buf.getvalue()


def test_progress_executor_runs_stages_at_once(tmp_path: Path) -> None:
    """Under `run_plan(jobs=2)` two stages run in threads and share one live display."""
    from concurrent.futures import ThreadPoolExecutor

    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True)
    ex = ProgressExecutor(
        _Writes(["rollout 1/2 questions 1s\n", "rollout 2/2 questions 2s\n"]), console, 0.01
    )
    names = ["eval-base", "eval-planner"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for f in [
            pool.submit(ex.run, SimpleNamespace(name=n), tmp_path / "logs" / f"{n}.log") for n in names
        ]:
            f.result()
    assert sorted(t.name for t in ex.times) == names and all(t.ok for t in ex.times)
    assert ex._running == 0 and not ex._progress.live.is_started  # the display stopped with the last
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    for n in names:
        assert f"done {n} in" in shown
