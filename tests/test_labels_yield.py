"""Pair yield: numbers per mode and the side-by-side table."""

from __future__ import annotations

from rich.console import Console

from matsql.labels import modes_for, run_labels
from matsql.labels.yield_stats import compute_yield, yield_table
from tests.test_labels_records import PROMPT_FN, build_records, load_fixture

INDEP = load_fixture("independent.yaml")["cases"][0]["records"]  # no fixes: collab modes starve
DISAGREE = [r for c in load_fixture("disagree.yaml")["cases"] for r in c["records"]]


def _stats():
    records = build_records(INDEP + DISAGREE)
    return [compute_yield(run_labels("val-sel", m, records, PROMPT_FN)) for m in modes_for("val-sel", "all")]


def test_yield_per_mode() -> None:
    stats = {s.mode: s for s in _stats()}
    assert [s.pairs for s in stats.values()] == [7, 4, 4, 4]
    assert stats["independent"].pairs_per_question == 7 / 3
    assert stats["collab"].questions_zero_pairs == 1
    assert stats["collab"].unusable == 4  # q1 has no fixes; its unknown critique is rejected anyway
    assert stats["collab_v2"].unusable == 2  # only its "incorrect" critiques need a fix
    assert stats["joint"].unusable == 0


def test_table_shows_modes_side_by_side() -> None:
    console = Console(record=True, width=200)
    console.print(yield_table(_stats()))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "independent" in line)
    for m in ("independent", "collab", "collab_v2", "joint"):
        assert m in header
    row = next(line for line in text.splitlines() if "pairs / question" in line)
    values = [c.strip() for c in row.split("│")[2:-1]]
    assert values == ["2.33", "1.33", "1.33", "1.33"]
    assert "verdicts incorrect>correct" in text
