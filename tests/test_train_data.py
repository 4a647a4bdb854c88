"""Training data: row formats, mixture weights, question-grouped eval split, hashes, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from matsql.benchmarks.splits import split_questions
from matsql.records import PreferencePair
from matsql.train.config import DataSpec, Source
from matsql.train.data import (
    DataError,
    fingerprint,
    load_split,
    mix,
    normalise_row,
    read_source,
)

PROMPT = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_rows_carry_the_prefix_in_the_message_and_name_the_agent():
    """`matsql labels` writes the prefix inside the assistant message; the agent names it."""
    row = {
        "prompt": PROMPT,
        "chosen": [{"role": "assistant", "content": "SELECT. good\nConclude: correct"}],
        "rejected": [{"role": "assistant", "content": "SELECT. bad\nConclude: incorrect"}],
        "agent": "val-sel",
        "question_id": "q7",
    }
    n = normalise_row(row, "orpo", "x[0]")
    assert n == {
        "messages": PROMPT,
        "prefix": "SELECT.",
        "chosen": " good\nConclude: correct",
        "rejected": " bad\nConclude: incorrect",
        "group": "q7",
    }


def test_preference_pair_records_are_continuations_after_the_prefix():
    p = PreferencePair(
        question_id="q1",
        db_id="d",
        agent="val-cond",
        mode="collab",
        prompt=PROMPT,
        prefix="CONDITION.",
        chosen=" ok",
        rejected=" no",
    )
    n = normalise_row(p.model_dump(), "orpo", "x[0]")
    assert (n["prefix"], n["chosen"], n["rejected"]) == ("CONDITION.", " ok", " no")


def test_sft_rows_prompt_completion_and_messages():
    pc = {
        "prompt": PROMPT,
        "completion": [{"role": "assistant", "content": "Answer: 2"}],
        "prefix": "Answer:",
    }
    assert normalise_row(pc, "sft", "x")["completion"] == " 2"
    msgs = {"messages": [*PROMPT, {"role": "assistant", "content": "Goal: x"}]}
    n = normalise_row(msgs, "sft", "x")
    assert n["messages"] == PROMPT and n["completion"] == "Goal: x" and n["prefix"] == ""
    with pytest.raises(DataError, match=r"x\[3\].*assistant"):
        normalise_row({"messages": PROMPT}, "sft", "x[3]")
    with pytest.raises(DataError, match="rejected"):
        normalise_row({"prompt": PROMPT, "chosen": "a"}, "orpo", "x")


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_source(Source(path=str(p)))
    with pytest.raises(DataError, match="not found"):
        read_source(Source(path=str(tmp_path / "missing")))


def test_mix_weight_is_a_fraction_or_repeats():
    rows = [{"i": i} for i in range(10)]
    assert len(mix(rows, 1.0, random.Random(0))) == 10
    assert len(mix(rows, 0.3, random.Random(0))) == 3
    two_and_half = mix(rows, 2.5, random.Random(0))
    assert len(two_and_half) == 25 and all(two_and_half.count(r) >= 2 for r in rows)


def test_eval_split_holds_out_whole_questions(tmp_path):
    """eval_fraction holds out whole questions by the hash draw of the one splitter: the same
    questions whatever the row order."""
    rows = [{"prompt": PROMPT, "completion": f"c{i}", "question_id": f"q{i % 20}"} for i in range(200)]
    held = []
    for name, rs in (("a", rows), ("b", rows[::-1])):
        spec = DataSpec(
            sources=[Source(path=str(_jsonl(tmp_path / f"{name}.jsonl", rs)))], eval_fraction=0.25, seed=3
        )
        split = load_split(spec, "sft")
        tg, hg = {r["group"] for r in split.train}, {r["group"] for r in split.eval}
        assert tg.isdisjoint(hg) and len(split.train) + len(split.eval) == 200 and 1 <= len(hg) <= 10
        held.append(hg)
    want = split_questions({f"q{i}" for i in range(20)}, {"eval": 0.25}, 3, "hash")["eval"]
    assert held[0] == held[1] == set(want)


def test_load_split_mixes_sources_and_reads_datasets_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    a = _jsonl(
        tmp_path / "a.jsonl",
        [{"prompt": PROMPT, "completion": "x", "question_id": f"a{i}"} for i in range(8)],
    )
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(
                [
                    {
                        "prompt": PROMPT,
                        "completion": [{"role": "assistant", "content": "y"}],
                        "question_id": f"b{i}",
                    }
                    for i in range(4)
                ]
            ),
            "test": datasets.Dataset.from_list(
                [
                    {
                        "prompt": PROMPT,
                        "completion": [{"role": "assistant", "content": "z"}],
                        "question_id": "t0",
                    }
                ]
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "b"))
    spec = DataSpec(
        sources=[Source(path=str(a), weight=0.5), Source(path=str(tmp_path / "b"), weight=2.0)],
        eval_sources=[Source(path=str(tmp_path / "b"), split="test")],
    )
    s = load_split(spec, "sft")
    assert len(s.train) == 4 + 8 and len(s.eval) == 1 and s.eval[0]["completion"] == "z"
    assert [x["train"] for x in s.per_source] == [4, 8, 0]
    with pytest.raises(DataError, match="no split 'dev'"):
        load_split(DataSpec(sources=[Source(path=str(tmp_path / "b"), split="dev")]), "sft")


def test_fingerprint_changes_with_content(tmp_path):
    p = _jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    f1 = fingerprint(p)
    _jsonl(p, [{"a": 2}])
    f2 = fingerprint(p)
    assert f1["sha256"] != f2["sha256"] and list(f1["files"]) == ["a.jsonl"]
