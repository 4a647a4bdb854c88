"""Selector options, MATS knockout and picks."""

from matsql.agents.selector import build_options
from matsql.evaluate.selection import knockout, majority_chooser, make_picks
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
