"""E4 fixer diagnostics on hand-built records."""

from matsql.evaluate.diagnostics import counterfactual_critiques, fixer_diagnostics, flip_verdict
from tests.record_builders import cand, crit, err, ok, record


def _records():
    return [
        record(
            "q1",
            [
                # wrong planner, critique flags it, fixer changes it and gets it right
                cand(
                    0,
                    "SELECT a",
                    ok("A"),
                    False,
                    ("incorrect", "correct"),
                    ("SELECT b", ok("B"), True),
                    gate=True,
                ),
                # right planner, critiques agree, fixer (run at label time) keeps it
                cand(1, "SELECT b", ok("B"), True, ("correct", "correct"), ("SELECT b", ok("B"), True)),
                # right planner, wrong critique, fixer breaks it
                cand(
                    2,
                    "SELECT b ",
                    ok("B"),
                    True,
                    ("correct", "incorrect"),
                    ("SELECT c", ok("C"), False),
                    gate=True,
                ),
                # failed planner, no fix
                cand(3, "SELECT x", err(), False, ("unknown", "unknown")),
            ],
        )
    ]


def test_change_and_flip_rates():
    d = fixer_diagnostics(_records(), prompt_digest_of=lambda rec, ci, bi: "p" if ci != 2 else "other")
    assert d.branches_fixed == 3
    assert (d.flagged, d.flagged_changed) == (2, 2)
    assert (d.cleared, d.cleared_changed) == (1, 0)  # whitespace/semicolon changes don't count
    assert (d.planner_wrong, d.wrong_to_right) == (1, 1)
    assert (d.planner_right, d.right_to_wrong) == (2, 1)
    assert (d.reach_checked, d.reach_ok) == (3, 2)
    r = d.rates()
    assert r["change_when_incorrect"] == 1.0 and r["change_when_correct"] == 0.0
    assert d.sampled_branches == 0 and r["samples_differ"] is None  # one fix per branch


def test_sampled_fixes_that_all_agree_are_counted():
    recs = _records()
    b0, b1 = recs[0].candidates[0].branches[0], recs[0].candidates[1].branches[0]
    b0.fixes.append(b0.fixes[0].model_copy())  # a greedy fixer asked for 2 samples
    b1.fixes.append(b1.fixes[0].model_copy(update={"text": "SELECT c", "sql": "SELECT c"}))
    d = fixer_diagnostics(recs)
    assert (d.sampled_branches, d.sampled_distinct) == (2, 1) and d.rates()["samples_differ"] == 0.5


def test_flip_verdict_rewrites_the_last_conclusion():
    c = crit("val-sel", "correct", " fine. Conclude: correct")
    f = flip_verdict(c)
    assert f.verdict == "incorrect" and f.text.endswith("Conclude: incorrect")
    no_line = flip_verdict(crit("val-sel", "incorrect", " bad"))
    assert no_line.verdict == "correct" and no_line.text.endswith("Conclude: correct")


def test_counterfactuals():
    rec = _records()[0]
    flipped = counterfactual_critiques(rec, 0, "flip")
    assert {k: v.verdict for k, v in flipped.items()} == {"val-sel": "correct", "val-cond": "incorrect"}
    swapped = counterfactual_critiques(rec, 0, "swap")
    assert swapped == rec.candidates[1].main.critiques  # next candidate with a different SQL


def test_validator_verdicts_against_planner_and_fixer_outcomes():
    from matsql.evaluate.diagnostics import validator_diagnostics

    d = validator_diagnostics(_records())
    vs, vc = d["val-sel"], d["val-cond"]
    # val-sel: caught cand 0 (fixed right), passed 1 and 2, unknown on 3
    assert (vs.critiques, vs.caught, vs.missed, vs.passed, vs.false_alarm, vs.unknown) == (4, 1, 0, 2, 0, 1)
    assert (vs.caught_fixed_runs, vs.caught_fixed_right) == (1, 1)
    # val-cond: passed the wrong cand 0 (a miss), passed 1, false alarm on 2, unknown on 3
    assert (vc.caught, vc.missed, vc.passed, vc.false_alarm, vc.unknown) == (0, 1, 1, 1, 1)
    r = vc.rates()
    assert r["accuracy"] == 1 / 3 and r["catch_rate"] == 0.0 and r["false_alarm_rate"] == 0.5
    assert r["balanced_accuracy"] == 0.25 and r["fixed_after_catch"] is None
    assert vs.rates()["balanced_accuracy"] == 1.0 and vs.rates()["unknown_rate"] == 0.25
