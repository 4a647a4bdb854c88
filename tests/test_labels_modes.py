"""Data-driven label tests: every fixture case (records -> expected pairs / yield) for every mode
it names. Fixtures: ``tests/fixtures/labels/*.yaml`` (see README there)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from matsql.agents.selector import build_options
from matsql.labels import (
    label_collab,
    label_collab_v2,
    label_e1,
    label_independent,
    label_joint,
    label_selector,
    run_labels,
)
from matsql.labels.yield_stats import compute_yield
from tests.test_labels_records import FIXTURES, PROMPT_FN, build_records, load_fixture

LABELERS = {
    "independent": label_independent,
    "collab": label_collab,
    "collab_v2": label_collab_v2,
    "joint": label_joint,
    "e1": label_e1,
}


def _cases(section: str) -> list[Any]:
    out = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        for case in load_fixture(path.name).get("cases", []):
            for mode in case.get(section, {}):
                out.append(pytest.param(case, mode, id=f"{path.stem}:{case['name']}:{mode}"))
    return out


def _label(case: dict[str, Any], mode: str):
    records = build_records(case["records"])
    opts = case.get("options", {})
    if case["agent"] == "selector":
        assert mode == "joint"
        return label_selector(records, "selector", PROMPT_FN, **opts)
    return LABELERS[mode](records, case["agent"], PROMPT_FN, **opts)


def _option_candidates(pair, text: str) -> tuple[int, ...]:
    """Selector texts are option numbers; map one back to the candidates of that option."""
    n = int(text)
    (opt,) = [o for o in (*pair.meta["chosen"], *pair.meta["rejected"]) if o["option"] == n - 1]
    return tuple(opt["option_candidates"])


def _as_expected(case: dict[str, Any], pairs) -> dict[str, list[tuple]]:
    got: dict[str, list[tuple]] = {}
    for p in pairs:
        if case["agent"] == "selector":
            key = (_option_candidates(p, p.chosen), _option_candidates(p, p.rejected))
        else:
            key = (tuple(p.meta["candidates"]), p.chosen, p.rejected)
        got.setdefault(p.question_id, []).append(key)
    return got


@pytest.mark.parametrize(("case", "mode"), _cases("expect"))
def test_expected_pairs(case: dict[str, Any], mode: str) -> None:
    pairs = _label(case, mode)
    got = _as_expected(case, pairs)
    for qid, exp in case["expect"][mode].items():
        if case["agent"] == "selector":
            want = [(tuple(c), tuple(r)) for c, r in exp]
        else:
            want = [(tuple(c), ch, rj) for c, ch, rj in exp]
        assert sorted(got.get(qid, [])) == sorted(want), f"question {qid}"
    assert set(got) <= set(case["expect"][mode]), "pairs for a question the fixture does not expect"
    for p in pairs:
        assert p.mode == mode and p.agent == case["agent"]
        assert p.chosen.strip() != p.rejected.strip()


@pytest.mark.parametrize(("case", "mode"), _cases("yield"))
def test_yield_numbers(case: dict[str, Any], mode: str) -> None:
    records = build_records(case["records"])
    run = run_labels(case["agent"], mode, records, PROMPT_FN, **case.get("options", {}))
    stats = compute_yield(run).to_dict()
    for field, want in case["yield"][mode].items():
        assert stats[field] == pytest.approx(want) if isinstance(want, float) else stats[field] == want, field


def test_pairs_share_the_validator_prompt_and_prefix() -> None:
    case = load_fixture("independent.yaml")["cases"][0]
    records = build_records(case["records"])
    pairs = label_independent(records, "val-sel", PROMPT_FN)
    c0 = records[0].candidates[0]
    want = PROMPT_FN("val-sel", records[0], c0)
    p = next(p for p in pairs if p.meta["candidates"] == [0])
    assert p.prompt == want.as_messages()
    assert p.prefix == "SELECT." == want.prefix
    assert "SELECT a FROM t" in p.prompt[-1]["content"]
    assert p.meta["chosen"][0] == {
        "candidate": 0,
        "branch": 0,
        "planner_correct": False,
        "verdict": "incorrect",
        "label": True,
    }


def test_identical_prompts_merge_even_across_candidates_with_other_sql_between() -> None:
    case = next(c for c in load_fixture("independent.yaml")["cases"] if c["name"].startswith("identical"))
    records = build_records(case["records"])
    (pair,) = label_independent(records, "val-sel", PROMPT_FN)
    assert [o["branch"] for o in pair.meta["chosen"]] == [0]
    assert pair.meta["chosen"][0]["candidate"] == 0 and pair.meta["rejected"][0]["candidate"] == 2


def test_collab_without_fixes_is_unusable_not_rejected() -> None:
    """Inference-only records (gate False, no fixes) give no collab pairs at all."""
    records = build_records(
        [
            {
                "id": "q",
                "candidates": [
                    {
                        "sql": "SELECT a FROM t",
                        "branches": [{"sel": "Conclude: incorrect"}, {"sel": "ok Conclude: correct"}],
                    }
                ],
            }
        ]
    )
    assert label_collab(records, "val-sel", PROMPT_FN) == []
    stats = compute_yield(run_labels("val-sel", "collab", records, PROMPT_FN))
    assert stats.unusable == 2 and stats.texts == 2
    assert len(label_independent(records, "val-sel", PROMPT_FN)) == 1


@pytest.mark.parametrize("mode", ["independent", "collab", "collab_v2", "joint"])
def test_unknown_verdict_is_never_chosen(mode: str) -> None:
    """Every branch of a right candidate ends right, so only the verdict decides: an unknown
    one must lose to a known one in every mode."""
    records = build_records(
        [
            {
                "id": "q",
                "candidates": [
                    {
                        "sql": "SELECT a FROM t",
                        "correct": True,
                        "branches": [
                            {"sel": "fine. Conclude: correct", "fixes": [True]},
                            {"sel": "no verdict", "fixes": [True], "final_correct": True},
                        ],
                    }
                ],
            }
        ]
    )
    (pair,) = LABELERS[mode](records, "val-sel", PROMPT_FN)
    assert pair.meta["rejected_verdict"] == "unknown"
    assert pair.rejected == "no verdict"


def test_wrong_agent_for_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="e1"):
        label_e1([], "val-sel", PROMPT_FN)
    with pytest.raises(ValueError, match="independent"):
        label_independent([], "fixer", PROMPT_FN)


def test_selector_chosen_number_points_at_a_correct_option_in_the_prompt() -> None:
    case = load_fixture("selector.yaml")["cases"][0]
    records = build_records(case["records"])
    pairs = label_selector(records, "selector", PROMPT_FN)
    assert pairs and all(p.prefix == "Answer:" for p in pairs)
    text = pairs[0].prompt[-1]["content"]
    for p in pairs:
        n = int(p.chosen)
        block = re.search(rf"Candidate {n}:\n```sql\n(.*?)\n```", text).group(1)
        assert block in {"SELECT a FROM t", "SELECT fixed_2_0_0 FROM t"}  # candidate 0 / fixed candidate 2
        m = int(p.rejected)
        assert re.search(rf"Candidate {m}:\n```sql\n(.*?)\n```", text).group(1) in {
            "SELECT w FROM t",
            "SELECT v FROM t",
        }
    assert len(re.findall(r"Candidate \d+:", text)) == 3  # failure dropped, duplicate result merged


def test_selector_order_is_seeded_per_question() -> None:
    rec = build_records(
        [
            {"id": f"q{i}", "candidates": [{"sql": f"SELECT {c} FROM t", "rows": c} for c in "abcdefgh"]}
            for i in range(6)
        ]
    )
    orders = {s: [[o.candidates[0] for o in build_options(r, seed=s)] for r in rec] for s in (0, 1)}
    assert orders[0] == [[o.candidates[0] for o in build_options(r, seed=0)] for r in rec]  # deterministic
    assert orders[0] != orders[1]  # the seed matters
    assert len({tuple(o) for o in orders[0]}) > 1  # keyed on the question, not one global order
    assert all(sorted(o) == list(range(8)) for o in orders[0])


def test_feedback_aware_selector_prompt_shows_verdicts() -> None:
    records = build_records(
        [
            {
                "id": "q",
                "candidates": [
                    {"sql": "SELECT a FROM t", "correct": True, "branches": [{"sel": "Conclude: correct"}]},
                    {"sql": "SELECT b FROM t", "branches": [{"sel": "Conclude: correct", "cond": "hmm"}]},
                ],
            }
        ]
    )
    plain = label_selector(records, "selector", PROMPT_FN)
    aware = label_selector(records, "selector", PROMPT_FN, with_verdicts=True)
    assert "Reviewer verdicts" not in plain[0].prompt[-1]["content"]
    text = aware[0].prompt[-1]["content"]
    assert "Reviewer verdicts: val-sel: correct\n" in text or text.endswith(
        "Reviewer verdicts: val-sel: correct"
    )
    assert "Reviewer verdicts: val-cond: unknown, val-sel: correct" in text
    assert [(p.chosen, p.rejected) for p in aware] == [(p.chosen, p.rejected) for p in plain]  # same order
