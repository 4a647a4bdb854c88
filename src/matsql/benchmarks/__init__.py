"""Benchmarks: BIRD / Spider / built-in minibench loaders and prompt schema text."""

from matsql.benchmarks.base import Benchmark, MissingDatabaseError
from matsql.benchmarks.paths import BenchmarkDataError, data_root
from matsql.benchmarks.registry import BENCHMARKS, load_benchmark

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkDataError",
    "MissingDatabaseError",
    "data_root",
    "load_benchmark",
]
