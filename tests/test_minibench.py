"""Built-in minibench: byte-determinism, informative gold answers, disjoint splits, BIRD layout."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from matsql.benchmarks import load_benchmark
from matsql.benchmarks.minibench import build_minibench, ensure_minibench, fingerprint, load_specs
from matsql.benchmarks.minibench_questions import informative
from matsql.sql import run_sql


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mb") / "seed0"
    build_minibench(out, seed=0)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_minibench(again, seed=0)
    first, second = _digests(built), _digests(again)
    assert first == second
    assert any(k.endswith(".sqlite") for k in first) and len(first) > 20
    manifest = json.loads((built / "MANIFEST.json").read_text())
    del first["MANIFEST.json"]
    assert manifest["files"] == first  # the manifest lists every other file's sha256


def test_other_seed_other_data(built: Path, tmp_path: Path) -> None:
    build_minibench(tmp_path / "s1", seed=1)
    a, b = _digests(built), _digests(tmp_path / "s1")
    assert a.keys() == b.keys()
    assert a["dev_databases/store/store.sqlite"] != b["dev_databases/store/store.sqlite"]
    assert a["dev.json"] != b["dev.json"]


def test_layout_and_counts(built: Path) -> None:
    _, schemas, families = load_specs()
    dev = json.loads((built / "dev.json").read_text())
    train = json.loads((built / "train.json").read_text())
    assert 250 <= len(train) <= 400 and 100 <= len(dev) <= 200  # targets: ~300 / ~150
    tables = json.loads((built / "dev_tables.json").read_text())
    assert [t["db_id"] for t in tables] == list(schemas) and 4 <= len(schemas) <= 6
    for db, specs in schemas.items():
        assert (built / "dev_databases" / db / f"{db}.sqlite").is_file()
        for t in specs:
            with (built / "dev_databases" / db / "database_description" / f"{t.name}.csv").open() as f:
                assert [r["original_column_name"] for r in csv.DictReader(f)] == [c.name for c in t.columns]
    for split in (dev, train):
        assert [r["question_id"] for r in split] == list(range(len(split)))
        assert set(Counter(r["difficulty"] for r in split)) == {"simple", "moderate", "challenging"}
        assert {r["db_id"] for r in split} == set(schemas)
    assert {r["family"] for r in dev + train} == {f.id for f in families}


def test_splits_are_disjoint(built: Path) -> None:
    dev = json.loads((built / "dev.json").read_text())
    train = json.loads((built / "train.json").read_text())
    assert not {r["SQL"] for r in dev} & {r["SQL"] for r in train}
    assert not {r["question"] for r in dev} & {r["question"] for r in train}
    assert len({r["SQL"] for r in dev + train}) == len(dev) + len(train)


def test_every_gold_runs_and_is_informative(built: Path) -> None:
    for split in ("minibench", "minibench-train"):
        bench = load_benchmark(split, built)
        assert bench.missing == []
        for q in bench.questions:
            res = run_sql(bench.db_path(q.db_id), q.gold_sql)
            assert res.ok, (q.question_id, res.error)
            assert informative(res.rows), (q.question_id, q.gold_sql, res.rows)


def test_schema_has_keys_and_descriptions(built: Path) -> None:
    bench = load_benchmark("minibench", built)
    text = bench.schema_text("store")
    assert "order_items.product_id = products.product_id" in text
    assert "orders.order_id ( integer | primary key | comment : the unique id of the order" in text


def test_database_has_nulls_and_foreign_keys(built: Path) -> None:
    db = built / "dev_databases" / "library" / "library.sqlite"
    res = run_sql(db, "SELECT COUNT(*) FROM loans WHERE return_date IS NULL")
    assert res.ok and res.rows[0][0] > 0
    orphans = run_sql(db, "SELECT COUNT(*) FROM loans WHERE book_id NOT IN (SELECT book_id FROM books)")
    assert orphans.rows == [(0,)]
    late = run_sql(db, "SELECT COUNT(*) FROM loans WHERE due_date != date(loan_date, '+21 days')")
    assert late.rows == [(0,)]


def test_existing_output_is_not_overwritten(built: Path) -> None:
    with pytest.raises(FileExistsError, match="--force"):
        build_minibench(built, seed=0)


def test_default_cache_builds_once_and_rebuilds_when_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MATSQL_CACHE", str(tmp_path))
    folder = ensure_minibench(0)
    assert folder == tmp_path / "minibench-seed0"
    b = load_benchmark("minibench")
    assert b.db_dir == folder / "dev_databases" and b.name == "minibench"
    stamp = (folder / "dev.json").stat().st_mtime_ns
    assert load_benchmark("minibench-train").name == "minibench-train"
    assert (folder / "dev.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    manifest["fingerprint"] = "stale"
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    ensure_minibench(0)
    assert json.loads((folder / "MANIFEST.json").read_text())["fingerprint"] == fingerprint()
    assert not list(tmp_path.glob(".minibench-seed0.*"))  # no temp folders left behind
