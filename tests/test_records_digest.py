"""The two prompt digests (``matsql.records``) are pinned: one is written into committed rollout
records, the other keys every sample's random stream, so neither formula may drift."""

from __future__ import annotations

from matsql.backends.base import ChatPrompt
from matsql.backends.chat import derive_seed
from matsql.records import record_prompt_digest, sampling_prompt_digest

PROMPT = ChatPrompt((("system", "You write SQL."), ("user", "How many singers? é")), "SELECT.")


def test_record_prompt_digest_is_pinned() -> None:
    assert record_prompt_digest(PROMPT) == "be847a3a3d1c5675"
    assert record_prompt_digest(ChatPrompt((("user", "x"),))) == "68491db9cf0a4739"
    # the prefix and the roles count
    assert record_prompt_digest(ChatPrompt(PROMPT.messages)) != record_prompt_digest(PROMPT)
    as_user = ChatPrompt((("user", "You write SQL."), PROMPT.messages[1]), "SELECT.")
    assert record_prompt_digest(as_user) != record_prompt_digest(PROMPT)


def test_sampling_prompt_digest_is_pinned() -> None:
    assert (
        sampling_prompt_digest(PROMPT) == "c7eae138f61e929e915772374d2ebbace28ec5a65e6c43882553d7679b122353"
    )
    assert sampling_prompt_digest("raw text") == (
        "610f26d87827f2210a060c7bb3a2c8e64768a8bcdbe9f2467dc4b9bb86300f2b"
    )
    assert sampling_prompt_digest(PROMPT) != record_prompt_digest(PROMPT)


def test_derive_seed_is_keyed_on_the_sampling_digest() -> None:
    assert derive_seed(0, PROMPT) == DERIVED[0]
    assert derive_seed(7, PROMPT, sample=3) == DERIVED[1]
    assert derive_seed(0, "raw text", bits=31) == DERIVED[2]


# derive_seed as it was computed before the digest moved to matsql.records (commit 90eeaf5)
DERIVED = (2194456807755345431, 3003083574199528700, 1006789414)
