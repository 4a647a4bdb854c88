"""The one question splitter (matsql.benchmarks.splits): each draw's properties, and the splits
of the three splitters it replaced, unchanged on real question ids (committed label splits, and
digests of the old functions' outputs captured before they were removed)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from matsql.benchmarks.paths import BenchmarkDataError
from matsql.benchmarks.splits import split_questions
from matsql.rollout.io import read_records
from tests.real_benchmarks import real_benchmark

RESULTS = Path(__file__).resolve().parents[1] / "results"
IDS = [f"q{i}" for i in range(50)]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# --- permutation (rollout --parts)


def test_parts_are_disjoint_deterministic_and_sized() -> None:
    sizes = {"sft": 600, "label": 128, "heldout": 1000}
    p = split_questions(range(7000), sizes, 0)
    assert {k: len(v) for k, v in p.items()} == sizes
    assert not set(p["sft"]) & set(p["label"]) and not set(p["label"]) & set(p["heldout"])
    assert not set(p["sft"]) & set(p["heldout"])
    assert all(v == sorted(v) for v in p.values())
    assert split_questions(range(7000), sizes, 0) == p
    assert split_questions(range(7000), sizes, 1)["label"] != p["label"]
    # a part depends on the sizes before it and its own, not on later parts
    assert split_questions(range(7000), {"sft": 600, "label": 128}, 0)["label"] == p["label"]
    with pytest.raises(ValueError, match="7001"):
        split_questions(range(7000), {"a": 7000, "b": 1}, 0)


def test_a_split_ignores_input_order_duplicates_and_the_global_random_state() -> None:
    import random

    for draw in ("permutation", "shuffle", "hash"):
        parts = {"a": 0.2, "b": 0.3} if draw == "hash" else {"a": 10, "b": 0.3}
        first = split_questions(IDS, parts, 4, draw)
        random.seed(0)
        assert split_questions([*reversed(IDS), *IDS[:7]], parts, 4, draw) == first, draw
        assert not set(first["a"]) & set(first["b"]), draw


# --- shuffle (label test split)


def test_label_split_is_seeded_and_sized() -> None:
    test = split_questions(IDS, {"test": 0.1}, 0, "shuffle")["test"]
    assert len(test) == 5 and set(test) <= set(IDS)
    assert split_questions(IDS, {"test": 0.1}, 1, "shuffle")["test"] != test


@pytest.mark.parametrize(
    ("n", "share", "n_test"), [(1, 0.1, 0), (3, 0.1, 1), (2, 0.9, 1), (10, 0.0, 0), (10, 0.25, 2)]
)
def test_a_positive_share_takes_at_least_one_and_never_all(n: int, share: float, n_test: int) -> None:
    assert len(split_questions([f"q{i}" for i in range(n)], {"test": share}, 0, "shuffle")["test"]) == n_test


def test_bad_sizes_and_draws_are_refused() -> None:
    for parts, draw, msg in (
        ({"test": 1.0}, "shuffle", r"share .* \[0, 1\)"),
        ({"a": -1}, "permutation", "negative"),
        ({"held": 1.5}, "hash", "shares in"),
        ({"a": 1}, "random", "draw must be one of"),
    ):
        with pytest.raises(ValueError, match=msg):
            split_questions(IDS, parts, 0, draw)  # type: ignore[arg-type]


# --- hash (SFT data and training eval split)


def test_hash_split_keeps_a_question_on_its_side_when_others_are_added() -> None:
    held = split_questions(IDS, {"held": 0.25}, 3, "hash")["held"]
    assert 1 <= len(held) <= 25
    more = split_questions([*IDS, *(f"r{i}" for i in range(100))], {"held": 0.25}, 3, "hash")["held"]
    assert [q for q in more if q in IDS] == held
    assert split_questions(IDS, {"held": 0.0}, 3, "hash")["held"] == []
    assert split_questions(IDS, {"held": 1.0}, 3, "hash")["held"] == sorted(IDS)
    two = split_questions(IDS, {"a": 0.25, "b": 0.25}, 3, "hash")
    assert two["a"] == held and not set(two["a"]) & set(two["b"])


# --- the old splitters' splits, unchanged


def test_committed_label_splits_are_reproduced() -> None:
    """Every committed labels folder that lists its test questions, beside the committed rollout
    it was built from (checked by sha256), gets the same test questions again."""
    checked = 0
    for y in sorted(RESULTS.rglob("yield.json")):
        meta = json.loads(y.read_text(encoding="utf-8"))
        if "test_questions" not in meta:
            continue
        (src,) = meta["provenance"]["rollouts"]
        rollout = y.parent.parent / (Path(src["path"]).name + ".gz")
        if (
            not rollout.is_file()
            or hashlib.sha256(gzip.decompress(rollout.read_bytes())).hexdigest() != src["sha256"]
        ):
            continue
        ids = [r.question_id for r in read_records(rollout)]
        opts = meta["options"]
        got = split_questions(ids, {"test": opts["test_frac"]}, opts["seed"], "shuffle")["test"]
        assert got == sorted(meta["test_questions"]), y
        checked += 1
    assert checked >= 10, f"only {checked} committed label splits found under {RESULTS}"


# (benchmark, draw, parts, seed) -> digest of the removed function's output on the benchmark's
# question ids, captured at commit bf5c3a5: labels.dataset.split_by_question (sorted test ids),
# train.data.split_groups (sorted held-out groups), rollout.runner.question_parts (positions).
OLD = [
    ("minibench-train", "shuffle", {"test": 0.1}, 0, "45799359a17c5e70"),
    ("minibench", "shuffle", {"test": 0.25}, 7, "d785787ac5ab8625"),
    ("spider-train", "shuffle", {"test": 0.1}, 0, "259120e1811b0723"),
    ("minibench-train", "hash", {"held": 0.1}, 0, "67da464282b83fea"),
    ("minibench", "hash", {"held": 0.3}, 42, "5e368ddb3b512ae0"),
    ("spider-train", "hash", {"held": 0.1}, 0, "91518fd2e6a002c5"),
    ("minibench-train", "permutation", {"a": 20, "b": 10}, 0, "54e2db4573613d94"),
    ("minibench", "permutation", {"x": 1, "y": 2, "z": 3}, 3, "bdde93e69f7bd65d"),
    ("spider-train", "permutation", {"sft": 600, "label": 128, "heldout": 1000}, 0, "77ef7cef3160d9fc"),
]


@functools.cache
def _question_ids(benchmark: str) -> list[str]:
    return [q.question_id for q in real_benchmark(benchmark).questions]


@pytest.mark.parametrize(("benchmark", "draw", "parts", "seed", "want"), OLD)
def test_the_old_splitters_splits_are_unchanged(
    benchmark: str, draw: str, parts: dict, seed: int, want: str
) -> None:
    try:
        ids = _question_ids(benchmark)
    except BenchmarkDataError as e:
        pytest.skip(f"{benchmark} data not here: {e}")
    if draw == "permutation":  # --parts splits positions in the benchmark's question list
        got: object = split_questions(range(len(ids)), parts, seed, "permutation")
    else:
        got = split_questions(ids, parts, seed, draw)[next(iter(parts))]  # type: ignore[arg-type]
    assert _digest(got) == want
