"""Chat examples -> token ids for training, matching what the model sees at inference.

Rules, each one a bug seen in practice when they are left to defaults:

- The prompt is rendered with the tokenizer's own chat template, ending in the assistant
  header plus the agent's prefix (``continue_final_message``), exactly as the local backend
  renders it; the completion is tokenized on its own, because at inference the model generates
  its tokens after the prompt's tokens.
- Exactly one BOS: rendered text is tokenized with ``add_special_tokens=False`` (templates such
  as Llama-3's write the BOS themselves); a BOS is prepended only when the template leaves it
  out and the tokenizer would normally add one.
- Exactly one end-of-turn, at the end of the completion: the template's own closing text
  (``<|im_end|>``, ``<|eot_id|>``), never an extra EOS behind it.
- Prompts are cut from the LEFT of the last user turn (where the schema is), so the chat
  header, the question and the instructions survive; completions are never cut (an example
  whose completion does not fit is dropped and counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SENTINEL = "\u2063MATSQL\u2063"


@dataclass(frozen=True)
class ChatFormat:
    """What a tokenizer's template puts around turns; computed once per tokenizer."""

    end_of_turn: str  # text closing an assistant turn, e.g. "<|im_end|>"
    bos_id: int | None  # BOS to prepend when the rendered prompt lacks it (None: never)


def chat_format(tokenizer: Any) -> ChatFormat:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
    )
    idx = rendered.find(_SENTINEL)
    if idx < 0:
        raise ValueError("the tokenizer's chat template does not render assistant messages")
    end = rendered[idx + len(_SENTINEL) :].strip() or (tokenizer.eos_token or "")
    if not end:
        raise ValueError(
            "cannot find an end-of-turn marker: the chat template closes no turn and there is no EOS"
        )
    bos_id = None
    if tokenizer.bos_token_id is not None:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            bos_id = tokenizer.bos_token_id
    return ChatFormat(end_of_turn=end, bos_id=bos_id)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], prefix: str = "") -> str:
    """The prompt text the model continues: template + assistant header + prefix."""
    if prefix:
        return tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": prefix}], tokenize=False, continue_final_message=True
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_completion(tokenizer: Any, fmt: ChatFormat, continuation: str) -> list[int]:
    """Token ids of the continuation followed by one end-of-turn."""
    ids = _ids(tokenizer, continuation + fmt.end_of_turn)
    eot = _ids(tokenizer, fmt.end_of_turn)
    if ids[-len(eot) :] != eot:  # the marker merged with the text before it: tokenize apart
        ids = _ids(tokenizer, continuation) + eot
    return ids


@dataclass(frozen=True)
class PromptIds:
    ids: list[int]
    cut: int  # tokens removed from the start of the last user turn


def encode_prompt(
    tokenizer: Any, fmt: ChatFormat, messages: list[dict[str, str]], prefix: str, budget: int | None
) -> PromptIds | None:
    """Prompt ids, cut from the left of the last user turn to fit ``budget`` tokens.

    Returns None when even the whole user turn removed would not fit."""
    text = render_prompt(tokenizer, messages, prefix)
    ids = _with_bos(fmt, _ids(tokenizer, text))
    if budget is None or len(ids) <= budget:
        return PromptIds(ids, 0)
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    start = -1
    if user:
        for candidate in (user, user.strip()):
            start = text.rfind(candidate)
            if start >= 0:
                user = candidate
                break
    if start < 0:
        raise ValueError(
            "cannot locate the user turn in the rendered chat template, so the prompt cannot be cut"
        )
    head = _with_bos(fmt, _ids(tokenizer, text[:start]))
    body = _ids(tokenizer, user)
    tail = _ids(tokenizer, text[start + len(user) :])
    excess = len(head) + len(body) + len(tail) - budget
    if excess <= 0:
        return PromptIds(head + body + tail, 0)
    if excess >= len(body):
        return None
    return PromptIds(head + body[excess:] + tail, excess)


def _with_bos(fmt: ChatFormat, ids: list[int]) -> list[int]:
    if fmt.bos_id is not None and (not ids or ids[0] != fmt.bos_id):
        return [fmt.bos_id, *ids]
    return ids


@dataclass(frozen=True)
class Limits:
    max_length: int
    max_prompt_length: int | None = None
    max_completion_length: int | None = None

    def prompt_budget(self, completion_len: int) -> int:
        budget = self.max_length - completion_len
        return min(budget, self.max_prompt_length) if self.max_prompt_length else budget

    def completion_fits(self, n: int) -> bool:
        return n < self.max_length and (self.max_completion_length is None or n <= self.max_completion_length)


@dataclass(frozen=True)
class Encoded:
    """One tokenised row, or why it was dropped."""

    row: dict[str, list[int]] | None
    prompt_cut: int = 0
    dropped: str | None = None  # "completion_too_long" | "prompt_too_long"


def encode_sft(
    tokenizer: Any,
    fmt: ChatFormat,
    messages: list[dict[str, str]],
    prefix: str,
    continuation: str,
    limits: Limits,
) -> Encoded:
    """``input_ids`` and ``labels`` (-100 over the prompt and the prefix: completion-only loss)."""
    completion = encode_completion(tokenizer, fmt, continuation)
    if not limits.completion_fits(len(completion)):
        return Encoded(None, dropped="completion_too_long")
    prompt = encode_prompt(tokenizer, fmt, messages, prefix, limits.prompt_budget(len(completion)))
    if prompt is None:
        return Encoded(None, dropped="prompt_too_long")
    row = {
        "input_ids": prompt.ids + completion,
        "labels": [-100] * len(prompt.ids) + completion,
    }
    return Encoded(row, prompt_cut=prompt.cut)


def encode_pair(
    tokenizer: Any,
    fmt: ChatFormat,
    messages: list[dict[str, str]],
    prefix: str,
    chosen: str,
    rejected: str,
    limits: Limits,
) -> Encoded:
    """Columns of TRL's ORPO collator; chosen and rejected share one (cut) prompt."""
    c = encode_completion(tokenizer, fmt, chosen)
    r = encode_completion(tokenizer, fmt, rejected)
    if not (limits.completion_fits(len(c)) and limits.completion_fits(len(r))):
        return Encoded(None, dropped="completion_too_long")
    prompt = encode_prompt(tokenizer, fmt, messages, prefix, limits.prompt_budget(max(len(c), len(r))))
    if prompt is None:
        return Encoded(None, dropped="prompt_too_long")
    p = prompt.ids
    row = {
        "prompt_input_ids": p,
        "prompt_attention_mask": [1] * len(p),
        "chosen_input_ids": p + c,
        "chosen_attention_mask": [1] * (len(p) + len(c)),
        "chosen_labels": [-100] * len(p) + c,
        "rejected_input_ids": p + r,
        "rejected_attention_mask": [1] * (len(p) + len(r)),
        "rejected_labels": [-100] * len(p) + r,
    }
    return Encoded(row, prompt_cut=prompt.cut)
