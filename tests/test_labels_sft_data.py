"""SFT data builders: planner plans from gold, teacher-labelled validators on real samples,
fixer targets, selector options, and the written datasets."""

from __future__ import annotations

import json

import pytest

from matsql.agents import fixer, planner, selector, validator
from matsql.labels import sft_data as sd
from matsql.records import AgentOutput, Branch, Candidate, Critique, ExecInfo, Question, RolloutRecord

GOLD = (
    "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year = 2014"
)


def schema(db_id: str) -> str:
    return f"CREATE TABLE singer (singer_id, name); -- {db_id}"


def ok(d: str) -> ExecInfo:
    return ExecInfo(status="ok", rows_digest=d, n_rows=2, preview=d)


def cand(
    i: int, sql: str | None, info: ExecInfo, correct: bool, crit: tuple[str, str] | None = None
) -> Candidate:
    branches = []
    if crit is not None:
        branches.append(
            Branch(
                critiques={
                    "val-sel": Critique(
                        agent="val-sel", text=f" sel {crit[0]} {i}\nConclude: {crit[0]}", verdict=crit[0]
                    ),
                    "val-cond": Critique(
                        agent="val-cond", text=f" cond {crit[1]} {i}\nConclude: {crit[1]}", verdict=crit[1]
                    ),
                },
                final_sql=sql,
                final_exec=info,
                final_correct=correct,
            )
        )
    return Candidate(
        index=i, planner=AgentOutput(text=sql or "", sql=sql), exec=info, correct=correct, branches=branches
    )


def record(qid: str, cands: list[Candidate], gold: str = GOLD) -> RolloutRecord:
    q = Question(question_id=qid, db_id="concert_singer", question="Who sang in 2014?", gold_sql=gold)
    return RolloutRecord(question=q, gold_exec=ok("g"), candidates=cands)


def sample_record(qid: str = "q1", crit: bool = True) -> RolloutRecord:
    c = ("incorrect", "correct") if crit else None
    return record(
        qid,
        [
            cand(
                0,
                "SELECT name FROM singer JOIN concert ON singer.singer_id = concert.singer_id WHERE year = 2014",
                ok("g"),
                True,
                c,
            ),
            cand(1, "SELECT name FROM singer", ok("w1"), False, c),
            cand(2, "SELECT  name FROM singer", ok("w1"), False, c),  # same text up to spacing: deduplicated
            cand(
                3, "SELECT nme FROM singer", ExecInfo(status="error", error="no such column: nme"), False, c
            ),
            cand(4, "SELECT age FROM singer", ok("w2"), False, c),
        ],
    )


def test_planner_plan_is_derived_from_gold_and_ends_with_it():
    b = sd.planner_examples([record("q1", []).question], schema)
    assert len(b.rows) == 1
    text = b.rows[0]["completion"][0]["content"]
    assert text.startswith(
        "Goal: Return `singer.name`.\nConditions: join on `singer.singer_id = concert.singer_id`; keep rows where `concert.year = 2014`.\nTables: singer (name, singer_id); concert (singer_id, year)\n"
    )
    assert planner.parse(text) == GOLD
    assert (
        b.rows[0]["prompt"]
        == planner.build(record("q1", []).question, schema("concert_singer")).as_messages()
    )


def test_planner_skips_gold_sqlglot_cannot_read():
    q = record("bad", [], gold="SELEC name FRM").question
    b = sd.planner_examples([q], schema)
    assert b.rows == [] and b.skipped["gold_unparsable"] == 1


@pytest.mark.parametrize("agent", ["val-sel", "val-cond"])
def test_validator_rows_are_teacher_critiques_of_real_samples_without_gold_in_prompt(agent):
    rec = sample_record()
    b = sd.validator_examples([rec], schema, agent, max_per_question=None)
    assert len(b.rows) == 4  # 5 samples, one duplicate text
    by_sql = {}
    for r in b.rows:
        user = r["prompt"][-1]["content"]
        assert GOLD not in user and "concert AS T2" not in user
        assert r["prefix"] == validator.prefix(agent) and r["completion"][0]["content"].startswith(
            r["prefix"]
        )
        assert validator.parse(r["completion"][0]["content"]) == r["label"]
        by_sql[user.split("```sql\n")[1].split("\n```")[0]] = r["label"]
    assert by_sql["SELECT nme FROM singer"] == "incorrect" and list(by_sql.values()).count("correct") == 1


def test_validator_cap_and_balance():
    recs = [sample_record(f"q{i}") for i in range(6)]
    capped = sd.validator_examples(recs, schema, "val-sel", max_per_question=2)
    assert len(capped.rows) == 12 and capped.skipped["over_max_per_question"] == 12
    bal = sd.validator_examples(recs, schema, "val-sel", max_per_question=None, correct_ratio=0.5)
    labels = [r["label"] for r in bal.rows]
    assert labels.count("correct") == labels.count("incorrect") == 6 and bal.skipped["balance"] == 12
    again = sd.validator_examples(recs, schema, "val-sel", max_per_question=None, correct_ratio=0.5)
    assert again.rows == bal.rows  # deterministic


def test_fixer_targets_gold_for_wrong_and_unchanged_for_kept_correct():
    rec = sample_record()
    b = sd.fixer_examples([rec], schema, keep_correct=1.0, max_per_question=None)
    by_label = {"fix": [], "keep": []}
    for r in b.rows:
        by_label[r["label"]].append(r)
        assert r["prefix"] == "FIXED SQL:"
        assert " sel incorrect" in r["prompt"][-1]["content"]  # the rollout's sampled critiques
    assert len(by_label["fix"]) == 3 and len(by_label["keep"]) == 1
    assert all(fixer.parse(r["completion"][0]["content"]) == GOLD for r in by_label["fix"])
    kept = by_label["keep"][0]
    assert fixer.parse(kept["completion"][0]["content"]) == rec.candidates[0].planner.sql
    assert kept["reason"] == "val-cond=correct,val-sel=incorrect"
    none_kept = sd.fixer_examples([rec], schema, keep_correct=0.0, max_per_question=None)
    assert {r["label"] for r in none_kept.rows} == {"fix"} and none_kept.skipped["correct_not_kept"] == 1


def test_fixer_falls_back_to_teacher_critiques():
    rec = sample_record(crit=False)
    b = sd.fixer_examples([rec], schema, critiques="rollout", keep_correct=0.0, max_per_question=None)
    assert len(b.rows) == 3
    assert all("Conclude: incorrect" in r["prompt"][-1]["content"] for r in b.rows)
    assert any("It returns `age` instead of `singer.name`" in r["prompt"][-1]["content"] for r in b.rows)


def test_selector_options_distinct_results_failures_dropped_shuffled_deterministically():
    recs = [sample_record(f"q{i}") for i in range(8)]
    b = sd.selector_examples(recs, schema, seed=0)
    assert len(b.rows) == 8
    orders = set()
    for r in b.rows:
        user = r["prompt"][-1]["content"]
        assert user.count("Candidate ") == 3  # g, w1, w2: the duplicate result and the error are gone
        k = selector.parse(r["completion"][0]["content"].removeprefix(r["prefix"]), 3)
        chosen = user.split(f"Candidate {k + 1}:\n```sql\n")[1].split("\n```")[0]
        assert chosen == recs[0].candidates[0].planner.sql
        orders.add(k)
    assert len(orders) > 1  # the correct option is not always in the same place
    assert sd.selector_examples(recs, schema, seed=0).rows == b.rows


def test_selector_needs_a_choice_with_one_correct_option():
    only_wrong = record("w", [cand(0, "SELECT 1", ok("a"), False), cand(1, "SELECT 2", ok("b"), False)])
    single = record("s", [cand(0, "SELECT 1", ok("g"), True), cand(1, "SELECT 1 ", ok("g"), True)])
    b = sd.selector_examples([only_wrong, single], schema, inject_gold=False)
    assert b.rows == [] and b.skipped == {"no_correct_option": 1, "no_choice": 1}


def test_selector_injects_gold_when_no_candidate_is_right():
    only_wrong = record("w", [cand(0, "SELECT 1", ok("a"), False), cand(1, "SELECT 2", ok("b"), False)])
    b = sd.selector_examples([only_wrong], schema)
    assert b.skipped["gold_injected"] == 1 and len(b.rows) == 1
    user = b.rows[0]["prompt"][-1]["content"]
    assert user.count("Candidate ") == 3
    k = selector.parse(b.rows[0]["completion"][0]["content"].removeprefix(b.rows[0]["prefix"]), 3)
    chosen = user.split(f"Candidate {k + 1}:\n```sql\n")[1].split("\n```")[0]
    assert chosen == only_wrong.question.gold_sql


def test_selector_can_show_validator_verdicts():
    b = sd.selector_examples([sample_record()], schema, with_verdicts=True)
    assert "Reviewer verdicts: val-cond: correct, val-sel: incorrect" in b.rows[0]["prompt"][-1]["content"]


def test_written_dataset_round_trips_into_training_rows(tmp_path):
    pytest.importorskip("datasets")
    from matsql.train.config import Source
    from matsql.train.data import normalise_row, read_source

    rows = sd.validator_examples([sample_record("q1"), sample_record("q2")], schema, "val-cond").rows
    counts = sd.write_sft(rows, tmp_path, "val-cond", test_ids={"q2"})
    assert counts == {"train": 4, "test": 4}
    back = read_source(Source(path=str(tmp_path / "val-cond"), split="train"))
    n = normalise_row(back[0], "sft", "x")
    assert n["prefix"] == "CONDITION." and not n["completion"].startswith("CONDITION.")
    assert n["completion"].endswith(f"Conclude: {back[0]['label']}")
    lines = [json.loads(x) for x in (tmp_path / "val-cond.jsonl").read_text().splitlines()]
    assert [x["split"] for x in lines].count("test") == 4
    assert read_source(Source(path=str(tmp_path / "val-cond"), split="test"))[0]["question_id"] == "q2"


def test_written_datasets_reload_with_an_empty_split(tmp_path):
    from datasets import load_from_disk

    rows = sd.selector_examples([sample_record("q0")], schema).rows
    sd.write_sft(rows, tmp_path, "selector", test_ids=set())
    dd = load_from_disk(str(tmp_path / "selector"))
    assert len(dd["train"]) == len(rows) and len(dd["test"]) == 0
