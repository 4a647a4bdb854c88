"""Disjoint question parts (``rollout --parts ... --part NAME``): SFT, label and held-out
questions of one benchmark never overlap, whatever each stage's run seed."""

from __future__ import annotations

import random

import pytest

from matsql.benchmarks.splits import split_questions
from matsql.rollout.config import RolloutConfig
from matsql.rollout.runner import parse_parts, select_questions
from tests.rollout_fakes import questions


def test_parse_parts_keeps_order_and_refuses_bad_specs() -> None:
    assert list(parse_parts("sft=600, label=128,heldout=1000").items()) == [
        ("sft", 600),
        ("label", 128),
        ("heldout", 1000),
    ]
    for bad, msg in (("sft", "NAME=SIZE"), ("sft=0", "positive"), ("a=1,a=2", "twice"), ("", "no parts")):
        with pytest.raises(ValueError, match=msg):
            parse_parts(bad)


def test_sample_draws_nested_sets_parts_do_not() -> None:
    """Why parts exist: the study's SFT rollout (--sample 600) and label rollout (--sample 128)
    shared seed 0, so every label question was an SFT question."""
    qs = questions(7000)
    sft = {q.question_id for q in select_questions(qs, RolloutConfig(benchmark="b", sample=600))}
    label = {q.question_id for q in select_questions(qs, RolloutConfig(benchmark="b", sample=128))}
    assert label <= sft
    spec = "sft=600,label=128"
    sft_p = {
        q.question_id for q in select_questions(qs, RolloutConfig(benchmark="b", parts=spec, part="sft"))
    }
    label_p = {
        q.question_id
        for q in select_questions(qs, RolloutConfig(benchmark="b", parts=spec, part="label", seed=1))
    }
    assert len(sft_p) == 600 and len(label_p) == 128 and not sft_p & label_p


def test_select_questions_part_then_sample_and_limit_and_errors() -> None:
    qs = questions(50)
    cfg = RolloutConfig(benchmark="b", parts="a=20,b=10", part="b", sample=5, limit=3)
    picked = select_questions(qs, cfg)
    part_b = {qs[i].question_id for i in split_questions(range(50), {"a": 20, "b": 10}, 0)["b"]}
    assert len(picked) == 3 and {q.question_id for q in picked} <= part_b
    order = [q.question_id for q in qs]
    assert [order.index(q.question_id) for q in picked] == sorted(order.index(q.question_id) for q in picked)
    with pytest.raises(ValueError, match="go together"):
        select_questions(qs, RolloutConfig(benchmark="b", part="b"))
    with pytest.raises(ValueError, match="not one of --parts: a, b"):
        select_questions(qs, RolloutConfig(benchmark="b", parts="a=20,b=10", part="c"))
    with pytest.raises(ValueError, match="--parts a=40,b=20: the parts ask for 60 questions; there are 50"):
        select_questions(qs, RolloutConfig(benchmark="b", parts="a=40,b=20", part="b"))


def test_parts_stay_out_of_the_config_hash() -> None:
    base = RolloutConfig(benchmark="b")
    assert RolloutConfig(benchmark="b", parts="a=1", part="a", parts_seed=3).digest() == base.digest()
    # the partition uses its own generator, not the global one: the global state does not move it
    random.seed(0)
    first = split_questions(range(10), {"a": 5}, 0)
    random.seed(1)
    assert split_questions(range(10), {"a": 5}, 0) == first and len(first["a"]) == 5
    assert any(split_questions(range(10), {"a": 5}, s) != first for s in range(1, 5))  # its seed does
