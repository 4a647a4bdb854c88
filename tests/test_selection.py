"""Selector options, MATS knockout, model-free pick rules and picks."""

import json
from pathlib import Path

from matsql.agents.selector import build_options, fixer_changed
from matsql.evaluate.metrics import majority_pick, question_outcome
from matsql.evaluate.selection import (
    PICK_RULES,
    approvals,
    approved_first_rule,
    knockout,
    majority_chooser,
    majority_rule,
    majority_verdict_tiebreak_rule,
    make_picks,
    producers,
    rule_picks,
    selector_near_top,
    selector_unless_majority,
    verdict_vote_rule,
)
from matsql.rollout.io import read_records
from tests.record_builders import cand, err, ok, record


def _rec(qid="q1"):
    return record(
        qid,
        [
            cand(0, "SELECT a", ok("A"), False),
            cand(1, "SELECT b", ok("B"), True),
            cand(2, "SELECT a2", ok("A"), False),  # same result as 0: deduplicated
            cand(3, "SELECT x", err(), False),  # failure: dropped
            cand(4, "SELECT c", ok("C"), False),
            cand(5, "SELECT d", ok("D"), False),
            cand(6, "SELECT e", ok("E"), False),
        ],
    )


def test_options_drop_failures_dedupe_and_order_is_arm_independent():
    r = _rec()
    opts = build_options(r, seed=3)
    assert sorted(o.exec.rows_digest for o in opts) == ["A", "B", "C", "D", "E"]
    assert next(o for o in opts if o.exec.rows_digest == "A").votes == 2
    assert next(o for o in opts if o.exec.rows_digest == "A").candidate_index == 0
    # another arm with the same results in another candidate order sees the same option order
    r2 = record("q1", list(reversed(r.candidates)))
    assert [o.exec.rows_digest for o in build_options(r2, seed=3)] == [o.exec.rows_digest for o in opts]
    # the seed changes the order (for some seed)
    orders = {tuple(o.exec.rows_digest for o in build_options(r, seed=s)) for s in range(10)}
    assert len(orders) > 1
    # no fixer changed a result here: the union options are these options, order and all
    assert not any(fixer_changed(c) for c in r.candidates)
    assert build_options(r, seed=3, union=True) == opts


def test_knockout_rounds_chunks_of_three():
    r = _rec()
    opts = build_options(r, seed=0)  # 5 options -> chunks [3, 2] -> 2 winners -> final
    calls = []

    def pick_correct_or_last(groups):
        calls.append([len(o) for _, o in groups])
        return [next((i for i, o in enumerate(os) if o.correct), len(os) - 1) for _, os in groups]

    [(win, rounds, fails, trace)] = knockout([r], [opts], pick_correct_or_last)
    assert calls == [[3, 2], [2]]
    assert rounds == 2 and fails == 0 and len(trace[0]) == 2
    assert opts[win].correct
    picks = make_picks([r], [opts], [win], [rounds], [fails], [trace])
    assert picks[0].correct and picks[0].pass_at_k and picks[0].candidate_index == 1


def test_unparsable_answer_advances_first_option_and_is_counted():
    r = _rec()
    opts = build_options(r, seed=0)
    [(win, _, fails, _)] = knockout([r], [opts], lambda groups: [None] * len(groups))
    assert fails == 3 and win == 0


def test_single_and_empty_option_sets_need_no_selector_call():
    one = record("q2", [cand(0, "SELECT 1", ok("A"), True), cand(1, "SELECT 2", err(), False)])
    none = record("q3", [cand(0, "SELECT z", err(), False)])
    opts = [build_options(one), build_options(none)]

    def never(groups):
        raise AssertionError("no selector call expected")

    res = knockout([one, none], opts, never)
    picks = make_picks([one, none], opts, [w for w, *_ in res])
    assert picks[0].correct and picks[0].n_options == 1
    assert not picks[1].correct and picks[1].option_index is None and not picks[1].pass_at_k


def test_majority_chooser_prefers_most_votes():
    r = _rec()
    opts = build_options(r, seed=0)
    [(win, *_)] = knockout([r], [opts], majority_chooser, chunk=len(opts))
    assert opts[win].exec.rows_digest == "A"


# --- model-free pick rules ------------------------------------------------------------------


def _fixed_rec():
    """Right result G: candidates 0 and 1 had it, but false alarms sent them to the fixer, which
    broke both (W1, W2); wrong result B: candidates 2, 3 and 4 agree on it, approved.
    Candidate 5 was flagged, and its fix kept the result (B): it is not counted twice."""
    return record(
        "q9",
        [
            cand(
                0,
                "SELECT g",
                ok("G"),
                True,
                ("incorrect", "correct"),
                ("SELECT w1", ok("W1"), False),
                gate=True,
            ),
            cand(
                1,
                "SELECT g2",
                ok("G"),
                True,
                ("correct", "incorrect"),
                ("SELECT w2", ok("W2"), False),
                gate=True,
            ),
            cand(2, "SELECT b", ok("B"), False, ("correct", "correct")),
            cand(3, "SELECT b2", ok("B"), False, ("correct", "correct")),
            cand(4, "SELECT b3", ok("B"), False, ("correct", "incorrect")),
            cand(
                5,
                "SELECT b4",
                ok("B"),
                False,
                ("incorrect", "incorrect"),
                ("SELECT b5", ok("B"), False),
                gate=True,
            ),
            cand(
                6,
                "SELECT x",
                err(),
                False,
                ("incorrect", "incorrect"),
                ("SELECT g3", ok("G"), True),
                gate=True,
            ),
        ],
    )


def test_union_options_add_the_planner_sql_the_fixer_replaced():
    r = _fixed_rec()
    opts = {o.exec.rows_digest: o for o in build_options(r, seed=0, union=True)}
    assert sorted(opts) == ["B", "G", "W1", "W2"]
    # G: candidate 6's fix (a final SQL) speaks for it, then the replaced planner SQL of 0 and 1
    assert opts["G"].candidates == (6, 0, 1) and opts["G"].sql == "SELECT g3" and opts["G"].correct
    assert [rank for rank, _ in producers(r, opts["G"])] == [6, 7 + 0, 7 + 1]
    # B: four final SQL; candidate 5's unchanged planner result is not counted again
    assert opts["B"].candidates == (2, 3, 4, 5) and opts["B"].votes == 4
    # the final options only: G has one vote (candidate 6's fix)
    final = {o.exec.rows_digest: o for o in build_options(r)}
    assert final["G"].votes == 1 and final["B"].votes == 4
    # same seeded order as the final options' builder, for another arm's candidate order too
    r2 = record("q9", list(reversed(r.candidates)))
    assert [o.exec.rows_digest for o in build_options(r2, seed=4, union=True)] == [
        o.exec.rows_digest for o in build_options(r, seed=4, union=True)
    ]


def test_union_vote_counts_a_false_alarm_victim_majority_does_not():
    r = _fixed_rec()
    maj, union = PICK_RULES["majority"], PICK_RULES["union-vote"]
    [pm] = rule_picks([r], maj)
    [pu] = rule_picks([r], union)
    assert pm.sql == "SELECT b" and not pm.correct  # B: 4 votes against G's 1
    # union: G has 3 votes (6's fix, 0 and 1's planner SQL), B 4: still B ...
    assert pu.sql == "SELECT b" and not pu.correct
    # ... until one more false alarm breaks a right candidate
    more = r.model_copy(deep=True)
    more.candidates[4] = cand(
        4, "SELECT g4", ok("G"), True, ("incorrect", "correct"), ("SELECT w3", ok("W3"), False), gate=True
    )
    [pm2] = rule_picks([more], maj)
    [pu2] = rule_picks([more], union)
    assert not pm2.correct and pu2.correct and pu2.sql == "SELECT g3" and pu2.candidate_index == 6
    assert pu2.pass_at_k and pm2.pass_at_k  # candidate 6's fix is right


def test_union_pass_at_k_counts_replaced_planner_sql():
    r = record(
        "q8",
        [
            cand(
                0,
                "SELECT g",
                ok("G"),
                True,
                ("incorrect", "correct"),
                ("SELECT w", ok("W"), False),
                gate=True,
            ),
            cand(1, "SELECT w", ok("W"), False, ("correct", "correct")),
        ],
    )
    [pm] = rule_picks([r], PICK_RULES["majority"])
    [pu] = rule_picks([r], PICK_RULES["union-vote"])
    assert not pm.pass_at_k and not pm.correct
    assert pu.pass_at_k and not pu.correct  # W: 2 votes, G: 1


def test_majority_rule_is_the_report_majority_with_its_tie_break():
    # two results with two votes each: the one holding the lowest candidate index wins, as in
    # metrics.majority_pick, whatever the options' shuffled order
    r = record(
        "q7",
        [
            cand(0, "SELECT a", ok("A"), False),
            cand(1, "SELECT b", ok("B"), True),
            cand(2, "SELECT b2", ok("B"), True),
            cand(3, "SELECT a2", ok("A"), False),
        ],
    )
    for seed in range(6):
        opts = build_options(r, seed=seed)
        w = majority_rule(r, opts)
        assert opts[w].candidate_index == majority_pick(r.candidates).index == 0
    assert question_outcome(r).majority is False
    assert majority_rule(r, []) is None


def test_verdict_rules_count_only_verdicts_that_judge_the_final_sql():
    r = _fixed_rec()
    c = {x.index: x for x in r.candidates}
    assert [approvals(c[i]) for i in range(7)] == [0, 0, 2, 2, 1, 0, 0]  # 5: fixed, same result
    assert not fixer_changed(c[5]) and fixer_changed(c[0]) and fixer_changed(c[6])
    opts = build_options(r)
    # verdict vote: B = 4 votes + 5 approvals; G = 1 (its fix has no verdict)
    assert opts[verdict_vote_rule(r, opts)].exec.rows_digest == "B"
    # approved-first: candidates 2 and 3 are fully approved, so B; with none approved: votes decide
    assert opts[approved_first_rule(r, opts)].exec.rows_digest == "B"
    # a tie of votes goes to the result with more applicable 'correct' verdicts, not the lowest index
    tie = record(
        "q6",
        [
            cand(0, "SELECT a", ok("A"), False, ("incorrect", "correct"), gate=True),  # fix had no SQL
            cand(1, "SELECT b", ok("B"), True, ("correct", "correct")),
        ],
    )
    topts = build_options(tie)
    assert topts[majority_rule(tie, topts)].exec.rows_digest == "A"
    assert topts[majority_verdict_tiebreak_rule(tie, topts)].exec.rows_digest == "B"


def test_selector_hybrids_defer_to_the_majority_where_it_is_clear():
    r = _fixed_rec()
    opts = build_options(r)
    pos = {o.exec.rows_digest: i for i, o in enumerate(opts)}
    maj = majority_rule(r, opts)
    assert opts[maj].exec.rows_digest == "B"
    # the selector picked G (1 vote): not within the top 4 votes, nor within slack 1
    assert selector_near_top(r, opts, pos["G"], slack=0) == maj
    assert selector_near_top(r, opts, pos["G"], slack=3) == pos["G"]
    assert selector_near_top(r, opts, None) == maj
    # 4 of 7 candidates agree: a strict majority, so the selector is not asked
    assert selector_unless_majority(r, opts, pos["G"]) == maj
    weak = record("q5", [cand(0, "SELECT a", ok("A"), False), cand(1, "SELECT b", ok("B"), True)])
    wopts = build_options(weak)
    chosen = next(i for i, o in enumerate(wopts) if o.exec.rows_digest == "B")
    assert selector_unless_majority(weak, wopts, chosen) == chosen


def test_no_rule_reads_gold():
    """Every rule picks the same option when each SQL's correctness is flipped."""
    recs = [_fixed_rec(), _rec()]
    flipped = []
    for r in recs:
        f = r.model_copy(deep=True)
        for c in f.candidates:
            c.correct = not c.correct
            for b in c.branches:
                b.final_correct = not b.final_correct
                for fx in b.fixes:
                    fx.correct = not fx.correct
        flipped.append(f)
    for name, rule in PICK_RULES.items():
        a = [p.sql for p in rule_picks(recs, rule)]
        b = [p.sql for p in rule_picks(flipped, rule)]
        assert a == b and all(a), name


def test_select_command_applies_a_rule_without_a_model(tmp_path):
    from typer.testing import CliRunner

    from matsql.cli import app
    from matsql.records import dumps

    rec = _fixed_rec()
    more = rec.model_copy(
        deep=True, update={"question": rec.question.model_copy(update={"question_id": "q10"})}
    )
    more.candidates[4] = cand(
        4, "SELECT g4", ok("G"), True, ("incorrect", "correct"), ("SELECT w3", ok("W3"), False), gate=True
    )
    src = tmp_path / "rollout.jsonl"
    src.write_text(dumps(rec) + "\n" + dumps(more) + "\n")
    got = {}
    for method in ("majority", "union-vote"):
        out = tmp_path / f"{method}.jsonl"
        res = CliRunner().invoke(app, ["select", str(src), "--method", method, "--out", str(out)])
        assert res.exit_code == 0, res.output
        got[method] = [json.loads(line) for line in out.read_text().splitlines()]
        summary = json.loads(out.with_suffix(".metrics.json").read_text())
        assert summary["method"] == method
        assert summary["options"] == ("union" if method == "union-vote" else "final")
    assert [p["sql"] for p in got["majority"]] == ["SELECT b", "SELECT b"]
    assert [p["sql"] for p in got["union-vote"]] == ["SELECT b", "SELECT g3"]
    assert [p["correct"] for p in got["union-vote"]] == [False, True]
    res = CliRunner().invoke(app, ["select", str(src), "--method", "vote", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "union-vote" in res.output


def test_rules_on_a_committed_evaluation_reproduce_its_majority_column():
    """On the study's COLLAB evaluation the majority rule is the report's majority (57.64%) and
    the union vote is what results/study-spider-v2/selection-offline.md reports (60.44%)."""
    path = (
        Path(__file__).resolve().parents[1] / "results" / "study-spider" / "eval-collab" / "rollout.jsonl.gz"
    )
    records = read_records(path)
    maj = rule_picks(records, PICK_RULES["majority"])
    assert [p.correct for p in maj] == [question_outcome(r).majority for r in records]
    assert sum(p.correct for p in maj) == 596
    assert sum(p.correct for p in rule_picks(records, PICK_RULES["union-vote"])) == 625


def test_select_over_several_rollout_files_writes_one_picks_file(tmp_path):
    """Two splits of one seed (spider-dev and a spider-train part) give one pooled picks file;
    a question in both files is refused."""
    from typer.testing import CliRunner

    from matsql.cli import app
    from matsql.records import dumps

    a, b = tmp_path / "dev.jsonl", tmp_path / "train.jsonl"
    a.write_text(dumps(_fixed_rec()) + "\n")
    b.write_text(dumps(_rec("t1")) + "\n" + dumps(_rec("t2")) + "\n")
    out = tmp_path / "pooled.jsonl"
    res = CliRunner().invoke(app, ["select", str(a), str(b), "--method", "union-vote", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["question_id"] for x in out.read_text().splitlines()] == ["q9", "t1", "t2"]
    assert json.loads(out.with_suffix(".metrics.json").read_text())["overall"]["n"] == 3
    res = CliRunner().invoke(app, ["select", str(a), str(a), "--method", "majority", "--out", str(out)])
    assert res.exit_code != 0 and "q9" in res.output


def test_knockout_over_union_options(tmp_path):
    """`--options union`: the selector model sees the replaced planner SQL too, and pass@K is
    the oracle over what it saw (echo backend: its answers do not parse, the first option of
    each chunk advances; the benchmark only supplies schema text)."""
    from typer.testing import CliRunner

    from matsql.cli import app
    from matsql.records import dumps

    rec = record(
        "minibench-dev-0",
        [
            cand(
                0,
                "SELECT g",
                ok("G"),
                True,
                ("incorrect", "correct"),
                ("SELECT w", ok("W"), False),
                gate=True,
            ),
            cand(1, "SELECT w2", ok("W"), False, ("correct", "correct")),
        ],
        db="school",
    )
    src = tmp_path / "rollout.jsonl"
    src.write_text(dumps(rec) + "\n")
    team = tmp_path / "team.yaml"
    team.write_text("defaults: {backend: echo}\nagents:\n  selector: {temperature: 0.0}\n")
    out = {}
    for opts in ("final", "union"):
        path = tmp_path / f"{opts}.jsonl"
        args = ["select", str(src), "--agents", str(team), "--benchmark", "minibench", "--options", opts]
        res = CliRunner().invoke(app, [*args, "--out", str(path)])
        assert res.exit_code == 0, res.output
        out[opts] = json.loads(path.read_text())
    assert (out["final"]["n_options"], out["final"]["pass_at_k"]) == (1, False)
    assert (out["union"]["n_options"], out["union"]["pass_at_k"]) == (2, True)
