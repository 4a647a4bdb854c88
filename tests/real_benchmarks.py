"""The real benchmarks of the data folder (``MATSQL_DATA``), each loaded once per test session.

Loading spider-train parses its 7000 gold queries to approximate their hardness, which takes
seconds, and several test files read it (the loader's counts, the splitter's pinned splits, the
SFT data of a part). They share one load here. A :class:`Benchmark` is only read after loading
(its memos aside), so sharing it changes nothing a test sees.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from matsql.benchmarks import load_benchmark
from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.paths import data_root


@functools.cache
def _load(name: str, root: Path) -> Benchmark:
    return load_benchmark(name)  # ``root`` keys the memo only: a test may point MATSQL_DATA elsewhere


def real_benchmark(name: str) -> Benchmark:
    """``load_benchmark(name)`` for the data folder in effect, loaded once per session. Where the
    data is missing it raises ``BenchmarkDataError`` every time (a caller skips on it)."""
    return _load(name, data_root())


def commands_share_the_loaded_benchmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI's commands (which import ``load_benchmark`` when they run) get the session's
    loaded benchmark for a plain ``load_benchmark(name)``; a call with a root still loads."""
    import matsql.benchmarks as benchmarks

    def load(name: str, root: Path | None = None) -> Benchmark:
        return real_benchmark(name) if root is None else load_benchmark(name, root)

    monkeypatch.setattr(benchmarks, "load_benchmark", load)
