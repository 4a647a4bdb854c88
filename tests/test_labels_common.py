"""Pairing, deduplication and capping shared by all label modes (``matsql.labels.common``)."""

from __future__ import annotations

import pytest

from matsql.backends.base import ChatPrompt
from matsql.labels.common import Group, Scored, distinct_texts, make_labeler, pair_groups, uncapped_pairs


def _group(qid: str, chosen: int, rejected: int, tag: str = "p") -> Group:
    items = [Scored(f"good {i}", 1.0, {"candidate": 0, "branch": i}) for i in range(chosen)]
    items += [Scored(f"bad {i}", 0.0, {"candidate": 0, "branch": chosen + i}) for i in range(rejected)]
    return Group(
        qid,
        "db",
        "val-sel",
        "independent",
        ChatPrompt.of([{"role": "user", "content": f"{qid}/{tag}"}]),
        items,
    )


def _keys(pairs) -> list[tuple[str, str, str]]:
    return [(p.question_id, p.chosen, p.rejected) for p in pairs]


def test_every_chosen_times_every_rejected_without_cap() -> None:
    pairs = pair_groups([_group("q", 3, 2)], max_pairs_per_prompt=None)
    assert sorted(_keys(pairs)) == sorted(("q", f"good {i}", f"bad {j}") for i in range(3) for j in range(2))


def test_cap_per_prompt_is_a_seeded_subset() -> None:
    full = set(_keys(pair_groups([_group("q", 3, 3)], max_pairs_per_prompt=None)))
    a = _keys(pair_groups([_group("q", 3, 3)], max_pairs_per_prompt=4, seed=1))
    assert len(a) == 4 and len(set(a)) == 4 and set(a) <= full
    assert a == _keys(pair_groups([_group("q", 3, 3)], max_pairs_per_prompt=4, seed=1))
    samples = {
        tuple(_keys(pair_groups([_group("q", 3, 3)], max_pairs_per_prompt=4, seed=s))) for s in range(8)
    }
    assert len(samples) > 1  # the seed picks the subset


def test_cap_of_one_prompt_does_not_depend_on_other_prompts() -> None:
    alone = _keys(pair_groups([_group("q", 3, 3)], max_pairs_per_prompt=2, seed=3))
    with_others = _keys(
        pair_groups([_group("a", 4, 4), _group("q", 3, 3), _group("z", 2, 5)], max_pairs_per_prompt=2, seed=3)
    )
    assert [k for k in with_others if k[0] == "q"] == alone


def test_cap_per_question_over_its_prompts() -> None:
    groups = [_group("q", 2, 2, "x"), _group("q", 2, 2, "y"), _group("r", 1, 1)]
    pairs = pair_groups(groups, max_pairs_per_prompt=None, max_pairs_per_question=3, seed=0)
    per_q = {q: sum(1 for p in pairs if p.question_id == q) for q in ("q", "r")}
    assert per_q == {"q": 3, "r": 1}


def test_invalid_caps_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_pairs_per_prompt"):
        pair_groups([], max_pairs_per_prompt=0)
    with pytest.raises(ValueError, match="max_pairs_per_question"):
        pair_groups([], max_pairs_per_question=0)


def test_dedup_strips_whitespace_and_drops_conflicts() -> None:
    g = Group(
        "q",
        "db",
        "val-sel",
        "collab",
        ChatPrompt.of([{"role": "user", "content": "u"}]),
        [
            Scored(" same", 1.0, {"branch": 0}),
            Scored("same \n", 1.0, {"branch": 1}),
            Scored("both", 1.0, {"branch": 2}),
            Scored("both", 0.0, {"branch": 3}),
            Scored("bad", 0.0, {"branch": 4}),
            Scored("unusable", None, {"branch": 5}),
        ],
    )
    texts, conflicts = distinct_texts(g)
    assert [(t.text, t.score, [o["branch"] for o in t.occurrences]) for t in texts] == [
        (" same", 1.0, [0, 1]),
        ("bad", 0.0, [4]),
    ]
    assert conflicts == ["both"]
    assert [(a.text, b.text) for a, b in uncapped_pairs(g)] == [(" same", "bad")]


def test_scores_order_pairs_beyond_booleans() -> None:
    """Fixer deltas: 1 > 0 > -1; equal scores never pair."""
    g = Group(
        "q",
        "db",
        "fixer",
        "e1",
        ChatPrompt.of([{"role": "user", "content": "u"}]),
        [Scored("up", 1.0), Scored("same", 0.0), Scored("same2", 0.0), Scored("down", -1.0)],
    )
    got = {(a.text, b.text) for a, b in uncapped_pairs(g)}
    assert got == {("up", "same"), ("up", "same2"), ("up", "down"), ("same", "down"), ("same2", "down")}


@pytest.mark.parametrize("seeded", [False, True])
def test_make_labeler_pairs_the_grouping_and_forwards_seed_only_when_seeded(seeded: bool) -> None:
    calls: list[dict] = []

    def groups_fake(records, agent, prompt_fn, **opts):
        calls.append({"records": records, "agent": agent, "prompt_fn": prompt_fn, **opts})
        return [_group("q", 3, 3)]

    label = make_labeler(groups_fake, seeded=seeded)
    pairs = label(["r"], "val-sel", "fn", max_pairs_per_prompt=2, seed=5, with_verdicts=True)
    expected = {"records": ["r"], "agent": "val-sel", "prompt_fn": "fn", "with_verdicts": True}
    assert calls == [{**expected, "seed": 5} if seeded else expected]
    assert _keys(pairs) == _keys(pair_groups([_group("q", 3, 3)], max_pairs_per_prompt=2, seed=5))
    assert label.__name__ == "label_fake" and label.__module__ == __name__
