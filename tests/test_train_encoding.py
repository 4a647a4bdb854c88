"""Chat tokenisation for training: one BOS, one end-of-turn, prompt-side prefix, left-cut prompts."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from matsql.agents import validator
from matsql.records import ExecInfo, Question
from matsql.train.encoding import (
    Limits,
    chat_format,
    encode_completion,
    encode_pair,
    encode_prompt,
    encode_sft,
    render_prompt,
)
from tests.conftest import build_tiny_tokenizer

SCHEMA = "\n".join(f"CREATE TABLE singer_{i} (singer_id INTEGER, name TEXT, age INTEGER);" for i in range(30))
QUESTION = Question(
    question_id="q1", db_id="concert_singer", question="How many singers are older than 30?", gold_sql=""
)


@pytest.fixture(scope="module", params=["qwen", "llama3"])
def tok(request):
    return build_tiny_tokenizer(llama3=request.param == "llama3")


def _prompt():
    return validator.build(
        "val-sel",
        QUESTION,
        SCHEMA,
        "SELECT count(*) FROM singer_1 WHERE age > 30",
        ExecInfo(status="ok", n_rows=1),
    )


def _count(ids, token_id):
    return sum(1 for i in ids if i == token_id)


def test_end_of_turn_is_the_templates_closing_token(tok):
    fmt = chat_format(tok)
    assert fmt.end_of_turn == tok.eos_token  # <|im_end|> / <|eot_id|>
    if tok.bos_token is not None:
        assert fmt.bos_id == tok.bos_token_id  # the tokenizer adds a BOS by default
    else:
        assert fmt.bos_id is None


def test_prompt_renders_like_inference_generation_prompt_plus_prefix(tok):
    p = _prompt()
    text = render_prompt(tok, p.as_messages(), p.prefix)
    gen = tok.apply_chat_template(p.as_messages(), tokenize=False, add_generation_prompt=True)
    assert text == gen + "SELECT."


def test_sft_sequence_has_one_bos_one_final_end_of_turn_and_completion_only_labels(tok):
    p = _prompt()
    fmt = chat_format(tok)
    enc = encode_sft(
        tok, fmt, p.as_messages(), p.prefix, " The query selects count(*).\nConclude: correct", Limits(4096)
    )
    ids, labels = enc.row["input_ids"], enc.row["labels"]
    eot = tok.convert_tokens_to_ids(fmt.end_of_turn)
    if tok.bos_token_id is not None:
        assert ids[0] == tok.bos_token_id and _count(ids, tok.bos_token_id) == 1
    # one end-of-turn per turn: system, user, and the assistant's, which is the last token
    assert ids[-1] == eot and _count(ids, eot) == 3
    n_prompt = next(i for i, lab in enumerate(labels) if lab != -100)
    assert all(lab == -100 for lab in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(ids[n_prompt:]) == " The query selects count(*).\nConclude: correct" + fmt.end_of_turn
    # the forced prefix is on the prompt side (no loss), right before the completion
    assert tok.decode(ids[:n_prompt]).endswith("SELECT.")


def test_prompt_is_cut_from_the_left_of_the_user_turn(tok):
    p = _prompt()
    fmt = chat_format(tok)
    full = encode_prompt(tok, fmt, p.as_messages(), p.prefix, None)
    budget = len(full.ids) - 50
    cut = encode_prompt(tok, fmt, p.as_messages(), p.prefix, budget)
    assert len(cut.ids) <= budget and cut.cut >= 50
    text = tok.decode(cut.ids)
    # chat header and system turn survive, the schema's first tables are gone, the question stays
    system = p.as_messages()[0]["content"]
    assert system in text and "singer_0 " not in text and "singer_29" in text
    assert QUESTION.question in text and text.endswith("SELECT.")
    if tok.bos_token_id is not None:
        assert cut.ids[0] == tok.bos_token_id and _count(cut.ids, tok.bos_token_id) == 1


def test_completion_is_never_cut_rows_that_cannot_fit_are_dropped(tok):
    p = _prompt()
    fmt = chat_format(tok)
    long = " word" * 200
    n = len(encode_completion(tok, fmt, long))
    enc = encode_sft(tok, fmt, p.as_messages(), p.prefix, long, Limits(4096, max_completion_length=n - 1))
    assert enc.row is None and enc.dropped == "completion_too_long"
    tiny = Limits(max_length=n + 5)  # the user turn cannot shrink enough for the header + completion
    assert encode_sft(tok, fmt, p.as_messages(), p.prefix, long, tiny).dropped == "prompt_too_long"
    ok = encode_sft(tok, fmt, p.as_messages(), p.prefix, long, Limits(max_length=n + 150))
    assert ok.row is not None and len(ok.row["input_ids"]) <= n + 150 and ok.prompt_cut > 0
    assert sum(lab != -100 for lab in ok.row["labels"]) == n


def test_pair_shares_one_prompt_and_masks_it_in_both_sequences(tok):
    p = _prompt()
    fmt = chat_format(tok)
    enc = encode_pair(
        tok,
        fmt,
        p.as_messages(),
        p.prefix,
        " ok.\nConclude: correct",
        " bad.\nConclude: incorrect",
        Limits(400),
    )
    r = enc.row
    n = len(r["prompt_input_ids"])
    eot = tok.convert_tokens_to_ids(fmt.end_of_turn)
    for side in ("chosen", "rejected"):
        ids, labels = r[f"{side}_input_ids"], r[f"{side}_labels"]
        assert ids[:n] == r["prompt_input_ids"]
        assert labels[:n] == [-100] * n and labels[n:] == ids[n:]
        assert ids[-1] == eot and _count(ids[n:], eot) == 1
        assert len(r[f"{side}_attention_mask"]) == len(ids)
        if tok.bos_token_id is not None:
            assert ids[0] == tok.bos_token_id and _count(ids, tok.bos_token_id) == 1
    assert len(r["prompt_input_ids"]) <= 400
