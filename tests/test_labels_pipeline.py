"""Labels on records written by the real rollout pipeline (canned backend, SQLite file): the
prompts the labelers rebuild must be exactly those the rollout generated under."""

from __future__ import annotations

from pathlib import Path

import pytest

from matsql.labels import check_prompts, make_prompt_fn, modes_for, run_labels, sft_e1
from matsql.labels.yield_stats import compute_yield
from matsql.rollout.io import read_rollouts
from matsql.rollout.runner import run_rollout
from tests import rollout_fakes as fakes


@pytest.fixture(scope="module")
def label_time_rollout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("roll")
    db = fakes.make_db(tmp / "music.sqlite")
    svc = fakes.sqlite_services(db, fakes.CannedBackend())
    cfg = fakes.label_time_config()
    out = tmp / "r.jsonl"
    run_rollout(fakes.questions(), cfg, svc, out, cfg.model_dump(mode="json"), show_progress=False)
    return out, svc


def test_rebuilt_prompts_match_the_rollout(label_time_rollout) -> None:
    path, svc = label_time_rollout
    records, headers = read_rollouts([path])
    assert headers and headers[0].config["benchmark"] == "fake"
    # every prompt the pipeline sent is recorded (record_prompt_digest) and rebuilt exactly
    recs = [r for r in records if r.candidates]
    recorded = [c.planner.prompt_digest for r in recs for c in r.candidates]
    recorded += [
        x.prompt_digest for r in recs for c in r.candidates for b in c.branches for x in b.critiques.values()
    ]
    recorded += [f.prompt_digest for r in recs for c in r.candidates for b in c.branches for f in b.fixes]
    assert len(recorded) > 50 and all(d and len(d) == 16 for d in recorded)
    assert check_prompts(records, make_prompt_fn(svc.schema_of), limit=10**6) == []
    # the check can fail, and a wrong schema is caught on every agent's prompt
    bad = check_prompts(records, make_prompt_fn(lambda db: "other schema"), limit=10**6)
    assert {b.split(": rebuilt")[0].split()[-1] for b in bad} == {"planner", "val-sel", "val-cond", "fixer"}


def test_every_mode_labels_pipeline_records(label_time_rollout) -> None:
    path, svc = label_time_rollout
    records, _ = read_rollouts([path])
    fn = make_prompt_fn(svc.schema_of)
    for agent in ("planner", "val-sel", "val-cond", "fixer", "selector"):
        for mode in modes_for(agent, "all"):
            run = run_labels(agent, mode, records, fn)
            y = compute_yield(run)
            assert y.questions == len(records) and y.questions_no_candidates == 1  # the missing-db question
            for p in run.pairs:
                assert p.chosen.strip() != p.rejected.strip() and p.agent == agent and p.mode == mode
            if agent.startswith("val-") and mode in ("collab", "collab_v2"):
                assert y.unusable == 0  # label-time rollouts fix every branch
            if agent == "fixer" and mode == "e1":
                assert y.pairs > 0  # sampled fixes of one (candidate, critique) prompt disagree


def test_collab_pairs_agree_with_the_fixer_outcome_of_each_branch(label_time_rollout) -> None:
    path, svc = label_time_rollout
    records, _ = read_rollouts([path])
    by_id = {r.question_id: r for r in records}
    pairs = run_labels("val-cond", "collab", records, make_prompt_fn(svc.schema_of)).pairs
    assert pairs
    for p in pairs:
        cands = by_id[p.question_id].candidates
        for side, want in (("chosen", True), ("rejected", False)):
            for o in p.meta[side]:
                br = cands[o["candidate"]].branches[o["branch"]]
                assert br.critiques["val-cond"].text == getattr(p, side)
                assert (br.fixes[0].correct and o["verdict"] != "unknown") == want


def test_sft_mix_on_pipeline_records(label_time_rollout) -> None:
    path, svc = label_time_rollout
    records, _ = read_rollouts([path])
    by_id = {r.question_id: r for r in records}
    examples = sft_e1(records, make_prompt_fn(svc.schema_of))
    assert {e.meta["kind"] for e in examples} == {"follow", "resist"}
    for e in examples:
        cand = by_id[e.question_id].candidates[e.meta["candidate"]]
        flagged = "incorrect" in e.meta["verdicts"].values()
        assert e.meta["kind"] == ("follow" if flagged != cand.correct else "resist")
        assert (e.meta["target_source"] == "planner") == cand.correct
        if e.meta["target_source"] == "fix":
            assert any(f.correct and f.text == e.completion for f in cand.branches[e.meta["branch"]].fixes)
