"""Pipeline semantics and resume, with a canned seeded backend and a real SQLite file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from matsql.rollout.config import RolloutConfig
from matsql.rollout.io import RolloutFileError, RolloutWriter, read_header, read_records, schema_style_of
from matsql.rollout.runner import run_rollout
from tests.rollout_fakes import CannedBackend, label_time_config, make_db, questions, sqlite_services

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path / "music.sqlite")


def _run(db, out, cfg, **kw):
    svc = sqlite_services(db, CannedBackend())
    return run_rollout(
        questions(), cfg, svc, out, cfg.model_dump(mode="json"), show_progress=False, **kw
    ), svc


def test_records_follow_pipeline_semantics(db, tmp_path):
    cfg = RolloutConfig(
        benchmark="fake", k=4, batch_questions=3, gate="exec_error_or_critique", greedy_first=True
    )
    _run(db, tmp_path / "r.jsonl", cfg)
    recs = read_records(tmp_path / "r.jsonl")
    assert [r.question_id for r in recs] == [f"q{i}" for i in range(10)]
    missing = recs[-1]
    assert missing.gold_exec.status == "missing_db" and missing.candidates == []
    for r in recs[:-1]:
        assert len(r.candidates) == 4
        assert r.candidates[0].greedy and not any(c.greedy for c in r.candidates[1:])
        for c in r.candidates:
            assert len(c.branches) == 1
            b = c.branches[0]
            if c.planner.sql is None:
                assert c.exec.status == "no_sql" and b.critiques == {} and b.gate
            else:
                assert set(b.critiques) == {"val-sel", "val-cond"}
                flagged = any(x.verdict == "incorrect" for x in b.critiques.values())
                assert b.gate == ((not c.exec.ok) or flagged)
            assert bool(b.fixes) == b.gate
            if b.gate and b.fix.sql:
                assert b.final_sql == b.fix.sql and b.final_correct == b.fix.correct
            else:
                assert b.final_sql == c.planner.sql and b.final_correct == c.correct
        # greedy planner output is PLANNER_OUTS[0]: right only for even questions
        assert r.candidates[0].correct == (int(r.question_id[1:]) % 2 == 0)


def test_label_time_rollouts_fix_every_branch(db, tmp_path):
    cfg = label_time_config()
    _, svc = _run(db, tmp_path / "r.jsonl", cfg)
    assert {t for kind, n, t in svc.backends["fixer"].calls if kind == "fixer"} == {1.0}
    distinct = 0
    for r in read_records(tmp_path / "r.jsonl")[:-1]:
        for c in r.candidates:
            if c.planner.sql:
                assert len(c.branches) == 4
            for b in c.branches:
                assert len(b.fixes) == 2  # run whether gated or not
                assert len({f.prompt_digest for f in b.fixes}) == 1
                distinct += b.fixes[0].text != b.fixes[1].text
    assert distinct > 0  # sampled fixes: E1 needs contrast within one prompt


def test_several_samples_at_temperature_zero_are_refused(db, tmp_path):
    """The fixer decodes greedily at inference; asking it for 2 samples per branch without a
    temperature once wrote 976 identical pairs of fixes (GPU study, 2026-11-27): now an error."""
    cfg = RolloutConfig(benchmark="fake", k=2, branches=2, fix_all=True, fixer_samples=2, gate="critique")
    with pytest.raises(ValueError, match=r"--fixer-temperature 1\.0"):
        _run(db, tmp_path / "r.jsonl", cfg)
    assert not (tmp_path / "r.jsonl").exists()


def test_unset_fixer_temperature_keeps_earlier_config_hashes():
    """Rollout files written before the option existed must still resume: an unset
    fixer_temperature hashes as if the field did not exist; a set one changes the hash."""
    cfg = RolloutConfig(benchmark="fake")
    # the fields an earlier file's hash saw (question selection, added later, never counts)
    before = cfg.model_dump(
        exclude={
            "limit", "offset", "shard", "sample", "fixer_temperature", "parts", "part", "parts_seed",
            "schema_style",
        }
    )  # fmt: skip
    want = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert cfg.digest() == want
    assert cfg.digest() != RolloutConfig(benchmark="fake", fixer_temperature=1.0).digest()


def test_schema_style_is_in_the_hash_unless_it_is_the_default():
    """The style shapes every prompt: another style is another config; the default hashes as
    before the field existed, so earlier files still resume."""
    base = RolloutConfig(benchmark="fake")
    assert base.schema_style == "mats"
    assert RolloutConfig(benchmark="fake", schema_style="mats").digest() == base.digest()
    assert RolloutConfig(benchmark="fake", schema_style="tiny").digest() != base.digest()
    with pytest.raises(ValueError, match="schema style 'fancy'"):
        RolloutConfig(benchmark="fake", schema_style="fancy")


def test_candidates_are_all_sampled_by_default_and_greedy_at_t0(db, tmp_path):
    """The users' setting: K candidates all sampled at T (no greedy candidate 0), unless asked;
    at T=0 candidate 0 is the greedy one either way (planner@1 of a K=1 greedy run)."""
    _, svc = _run(db, tmp_path / "s.jsonl", RolloutConfig(benchmark="fake", k=3))
    planner_calls = [(n, t) for kind, n, t in svc.backends["planner"].calls if kind == "planner"]
    assert planner_calls and all(t == 1.0 and n == 3 for n, t in planner_calls)
    for r in read_records(tmp_path / "s.jsonl")[:-1]:
        assert len(r.candidates) == 3 and not any(c.greedy for c in r.candidates)
    _run(db, tmp_path / "g.jsonl", RolloutConfig(benchmark="fake", k=1, temperature=0.0))
    for r in read_records(tmp_path / "g.jsonl")[:-1]:
        assert [c.greedy for c in r.candidates] == [True]


def test_greedy_first_hashes_as_what_it_does():
    """All-sampled is another config where planner candidates are generated at T > 0; where the
    flag changes nothing (T=0, --planner-from) a run hashes as it did when greedy-first was the
    default, so the committed greedy and evaluation runs keep their hashes."""
    sampled, greedy = RolloutConfig(benchmark="fake"), RolloutConfig(benchmark="fake", greedy_first=True)
    assert sampled.digest() != greedy.digest()
    for kw in ({"temperature": 0.0, "k": 1}, {"planner_from": "p.jsonl"}):
        assert (
            RolloutConfig(benchmark="fake", **kw).digest()
            == RolloutConfig(benchmark="fake", greedy_first=True, **kw).digest()
        )


def test_committed_rollout_headers_keep_their_config_hashes():
    """Every rollout header under results/ still hashes to the config hash it was written with."""
    files = sorted(p for p in RESULTS.rglob("*.jsonl*") if p.suffix in (".jsonl", ".gz"))
    checked = 0
    for p in files:
        try:
            header = read_header(p)
        except RolloutFileError:
            continue  # a picks or outcomes file: not a rollout
        if header is None:
            continue
        fields = {k: v for k, v in header.config.items() if k in RolloutConfig.model_fields}
        assert RolloutConfig(**fields).digest() == header.config_hash, p
        # the committed plans' commands never passed --greedy-first: under the all-sampled default
        # their greedy (T=0) and --planner-from runs still hash the same; runs that sampled
        # planner candidates would now sample all K, a different config
        checked += 1
        if fields.pop("greedy_first", None) is False:
            continue  # made under the all-sampled default (e.g. the demo's): nothing to re-default
        same = fields.get("temperature") == 0 or bool(fields.get("planner_from"))
        assert (RolloutConfig(**fields).digest() == header.config_hash) == same, p
    assert checked >= 10, f"only {checked} rollout headers under {RESULTS}"


def test_the_header_records_the_schema_style(db, tmp_path):
    cfg = RolloutConfig(benchmark="fake", k=1, schema_style="tiny")
    _run(db, tmp_path / "r.jsonl", cfg)
    header = read_header(tmp_path / "r.jsonl")
    assert header is not None and header.config["schema_style"] == "tiny"
    assert schema_style_of([header]) == "tiny"
    assert schema_style_of([None]) == schema_style_of([]) == "mats"


def test_kill_and_resume_equals_uninterrupted(db, tmp_path, monkeypatch):
    cfg = RolloutConfig(benchmark="fake", k=4, batch_questions=4, seed=7)
    _run(db, tmp_path / "full.jsonl", cfg)

    real_write = RolloutWriter.write
    calls = {"n": 0}

    def dying_write(self, record):
        if calls["n"] == 6:  # dies mid-batch (batch 2 of 3), after 6 records
            raise KeyboardInterrupt
        calls["n"] += 1
        real_write(self, record)

    monkeypatch.setattr(RolloutWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        _run(db, tmp_path / "resumed.jsonl", cfg)
    monkeypatch.setattr(RolloutWriter, "write", real_write)
    # a torn line, as if killed inside write()
    with (tmp_path / "resumed.jsonl").open("a") as f:
        f.write('{"question": {"question_id": "q6"')
    stats, _ = _run(db, tmp_path / "resumed.jsonl", cfg)
    assert stats["written"] == 4
    full = (tmp_path / "full.jsonl").read_text().splitlines()[1:]
    resumed = (tmp_path / "resumed.jsonl").read_text().splitlines()[1:]
    assert sorted(resumed) == sorted(full)
    assert len({json.loads(x)["question"]["question_id"] for x in resumed}) == len(resumed) == 10


def test_resume_refuses_a_different_config(db, tmp_path):
    _run(db, tmp_path / "r.jsonl", RolloutConfig(benchmark="fake", k=2))
    with pytest.raises(RolloutFileError, match="written with config"):
        _run(db, tmp_path / "r.jsonl", RolloutConfig(benchmark="fake", k=3))


def test_planner_from_shares_candidates(db, tmp_path):
    _run(db, tmp_path / "a.jsonl", RolloutConfig(benchmark="fake", k=3, seed=1))
    cfg_b = RolloutConfig(benchmark="fake", k=3, seed=2, planner_from=str(tmp_path / "a.jsonl"))
    _, svc = _run(db, tmp_path / "b.jsonl", cfg_b)
    a, b = read_records(tmp_path / "a.jsonl"), read_records(tmp_path / "b.jsonl")
    for ra, rb in zip(a, b, strict=True):
        assert [c.planner.text for c in ra.candidates] == [c.planner.text for c in rb.candidates]
    # run b made no planner call: only validators and the fixer ran
    kinds = {kind for kind, _, _ in svc.backends["planner"].calls}
    assert "planner" not in kinds and "validator" in kinds


def test_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"kind": "header", "matsql_version": "0", "config_hash": "x", "config": {}, "created": ""}\nnot json\n'
    )
    with pytest.raises(RolloutFileError, match=r"bad.jsonl:2"):
        read_records(p)


def test_shards_merge_back_to_one_uninterrupted_run(db, tmp_path):
    from matsql.rollout.io import merge_rollouts

    cfg = RolloutConfig(benchmark="fake", k=3, batch_questions=2, seed=5)
    _run(db, tmp_path / "full.jsonl", cfg)
    shards = []
    for i in range(3):
        c = cfg.model_copy(update={"shard": (i, 3)})
        _run(db, tmp_path / f"s{i}.jsonl", c)
        shards.append(tmp_path / f"s{i}.jsonl")
    n = merge_rollouts(shards, tmp_path / "merged.jsonl")
    assert n == 10
    full = [r.question_id for r in read_records(tmp_path / "full.jsonl")]
    merged = read_records(tmp_path / "merged.jsonl")
    assert [r.question_id for r in merged] == full
    with pytest.raises(RolloutFileError, match="also in"):
        merge_rollouts([shards[0], shards[0]], tmp_path / "dup.jsonl")


def test_gzipped_rollouts_read_the_same(db, tmp_path):
    import gzip
    import shutil

    _run(db, tmp_path / "r.jsonl", RolloutConfig(benchmark="fake", k=2))
    with (tmp_path / "r.jsonl").open("rb") as src, gzip.open(tmp_path / "r.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert read_records(tmp_path / "r.jsonl.gz") == read_records(tmp_path / "r.jsonl")


def test_sample_picks_a_seeded_subset_in_benchmark_order():
    from matsql.rollout.runner import select_questions

    qs = questions(10)
    a = select_questions(qs, RolloutConfig(benchmark="fake", sample=4, seed=1))
    b = select_questions(qs, RolloutConfig(benchmark="fake", sample=4, seed=1))
    ids = [q.question_id for q in a]
    assert ids == [q.question_id for q in b] and len(ids) == 4
    assert ids == sorted(ids, key=lambda x: int(x[1:]))  # benchmark order kept
    subsets = {
        tuple(q.question_id for q in select_questions(qs, RolloutConfig(benchmark="fake", sample=4, seed=s)))
        for s in range(10)
    }
    assert len(subsets) > 1 and subsets != {("q0", "q1", "q2", "q3")}  # random, not a prefix
