"""Label datasets on disk: split by question, TRL conversational formats, JSONL view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from matsql.labels.common import SFTExample
from matsql.labels.dataset import pair_row, sft_row, write_split
from matsql.records import PreferencePair


def _pair(qid: str, i: int) -> PreferencePair:
    return PreferencePair(
        question_id=qid,
        db_id="db",
        agent="val-sel",
        mode="collab",
        prompt=[{"role": "system", "content": "sys"}, {"role": "user", "content": f"u {qid}"}],
        prefix="SELECT.",
        chosen=f" good {i}\nConclude: correct",
        rejected=f" bad {i}\nConclude: incorrect",
        meta={"candidates": [i]},
    )


def test_write_pairs_dataset_dict_split_by_question(tmp_path: Path) -> None:
    from datasets import load_from_disk

    pairs = [_pair(f"q{i % 7}", i) for i in range(21)]
    test_ids = {"q1", "q4"}
    counts = write_split(tmp_path, "pairs", pairs, test_ids)
    dd = load_from_disk(str(tmp_path / "pairs"))
    assert set(dd) == {"train", "test"}
    assert counts == {"train": dd["train"].num_rows, "test": dd["test"].num_rows}
    assert dd["train"].num_rows + dd["test"].num_rows == 21 and dd["test"].num_rows == 3 * len(test_ids)
    assert not set(dd["train"]["question_id"]) & set(dd["test"]["question_id"])
    assert set(dd["test"]["question_id"]) == test_ids
    row = dd["train"][0]
    src = next(p for p in pairs if p.chosen.strip() in row["chosen"][0]["content"])
    assert row["prompt"] == src.prompt
    assert row["chosen"] == [{"role": "assistant", "content": "SELECT." + src.chosen}]
    assert row["rejected"] == [{"role": "assistant", "content": "SELECT." + src.rejected}]
    assert json.loads(row["meta"]) == src.meta
    lines = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert len(lines) == 21 and {x["split"] for x in lines if x["question_id"] in test_ids} == {"test"}

    # rewriting replaces the old dataset folder
    write_split(tmp_path, "pairs", pairs[:2], set())
    assert load_from_disk(str(tmp_path / "pairs"))["train"].num_rows == 2


def test_write_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_split(tmp_path, "pairs", [_pair("q", 0)], set())
    assert (tmp_path / "pairs" / "mine.txt").exists()


def test_empty_split_keeps_the_schema(tmp_path: Path) -> None:
    from datasets import load_from_disk

    write_split(tmp_path, "pairs", [], set())
    dd = load_from_disk(str(tmp_path / "pairs"))
    assert dd["train"].num_rows == 0
    assert {"prompt", "chosen", "rejected", "question_id"} <= set(dd["train"].column_names)


def _tiny_chat_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    t.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return t


def test_rows_are_trl_conversational_formats() -> None:
    """TRL renders our rows as prompt + assistant turn that starts with the agent's prefix."""
    pytest.importorskip("trl")
    from trl.data_utils import apply_chat_template, is_conversational

    tok = _tiny_chat_tokenizer()
    row = pair_row(_pair("q", 1))
    assert is_conversational(row)
    out = apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert out["prompt"] == "<system>sys</s><user>u q</s><assistant>"
    assert out["chosen"] == "SELECT. good 1\nConclude: correct</s>"
    assert out["rejected"] == "SELECT. bad 1\nConclude: incorrect</s>"

    ex = SFTExample(
        question_id="q",
        db_id="db",
        agent="fixer",
        mode="e1",
        prompt=[{"role": "user", "content": "fix it"}],
        prefix="FIXED SQL:",
        completion="\n```sql\nSELECT 1\n```",
    )
    srow = sft_row(ex)
    out = apply_chat_template({k: srow[k] for k in ("prompt", "completion")}, tok)
    assert out == {
        "prompt": "<user>fix it</s><assistant>",
        "completion": "FIXED SQL:\n```sql\nSELECT 1\n```</s>",
    }


def test_an_empty_leftover_folder_is_replaced(tmp_path: Path) -> None:
    from datasets import load_from_disk

    (tmp_path / "pairs").mkdir()  # e.g. a run folder copied without its dataset files
    write_split(tmp_path, "pairs", [_pair("q", 0)], set())
    assert load_from_disk(str(tmp_path / "pairs"))["train"].num_rows == 1
