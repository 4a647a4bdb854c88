"""Benchmarks by name: ``load_benchmark("spider-dev")`` and friends.

``root`` overrides the data folder (``data_root()``); for ``minibench``/``minibench-train`` it
is a folder written by ``matsql data minibench OUT``, and without it the seed-0 build is made
once under the cache folder (``$MATSQL_CACHE`` or ``~/.cache/matsql``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.bird import load_bird_dev, load_bird_minidev
from matsql.benchmarks.minibench import ensure_minibench, load_minibench
from matsql.benchmarks.paths import data_root
from matsql.benchmarks.spider import load_spider_dev, load_spider_train

_LOADERS: dict[str, Callable[[Path], Benchmark]] = {
    "spider-dev": load_spider_dev,
    "spider-train": load_spider_train,
    "bird-minidev": load_bird_minidev,
    "bird-dev": load_bird_dev,
}
MINIBENCH = {"minibench": "dev", "minibench-train": "train"}
BENCHMARKS: tuple[str, ...] = (*_LOADERS, *MINIBENCH)


def load_benchmark(name: str, root: Path | None = None) -> Benchmark:
    """Load a benchmark by name (see ``BENCHMARKS``); errors name missing files."""
    if name in MINIBENCH:
        folder = Path(root) if root is not None else ensure_minibench(seed=0)
        return load_minibench(folder, MINIBENCH[name])
    if name not in _LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return _LOADERS[name](Path(root).resolve() if root is not None else data_root())
