"""Record formats shared by every stage: questions, rollout records, preference pairs.

One rollout record per question (one JSON line), carrying everything later stages need so that
labelling, metrics and statistics never re-run a model. See DESIGN.md "Records".

Structure of a rollout record::

    RolloutRecord
      question: Question
      candidates: [Candidate]            # K planner samples (index 0 is greedy when greedy_first)
        planner: AgentOutput             # text, parsed SQL, sampling seed
        exec: ExecInfo                   # planner SQL executed
        correct: bool                    # planner SQL vs gold (EX)
        branches: [Branch]               # >= 1; branch 0 is what inference does; label-time
                                         # rollouts sample M branches per candidate
          critiques: {agent: Critique}   # one per validator ("val-sel", "val-cond")
          gate: bool                     # did the gating policy send it to the fixer
          fixes: [Fix]                   # fixer samples (prompt shared); fixes[0] is the one used
          final_sql / final_correct      # gated pipeline result of this branch
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

if TYPE_CHECKING:
    from matsql.backends.base import ChatPrompt

Verdict = Literal["correct", "incorrect", "unknown"]
ExecStatus = Literal["ok", "error", "timeout", "no_sql", "missing_db"]
VALIDATORS: tuple[str, ...] = ("val-sel", "val-cond")
AGENTS: tuple[str, ...] = ("planner", "val-sel", "val-cond", "fixer", "selector")


def digest(text: str) -> str:
    """Short stable digest of a text (prompts, rows) for records and caches."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# Two prompt digests, one per purpose. Their formulas differ and must stay as they are: the
# first is written into committed rollout records, the second keys every sample's random stream.


def record_prompt_digest(prompt: ChatPrompt) -> str:
    """The ``prompt_digest`` a rollout record stores beside an agent's output (planner, critique,
    fix): 16 hex digits over the messages and the assistant prefix. Labelers and diagnostics
    rebuild a prompt and compare this digest to check it is the prompt that was sent."""
    body = "\x1e".join(f"{r}\x1f{c}" for r, c in prompt.messages)
    return digest(body + "\x1d" + prompt.prefix)


def sampling_prompt_digest(prompt: ChatPrompt | str) -> str:
    """The full sha256 of a prompt's content (messages + prefix, or a raw text) that keys
    sampling (``backends.chat.derive_seed``), the echo backend's texts and the server's replies.
    Changing it changes every sample, so it is not the record digest above."""
    payload = prompt if isinstance(prompt, str) else json.dumps([prompt.messages, prompt.prefix])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Question(_Model):
    question_id: str
    db_id: str
    question: str
    evidence: str = ""
    gold_sql: str
    difficulty: str = "unknown"
    benchmark: str = ""


class ExecInfo(_Model):
    """Outcome of running one SQL text on one database."""

    status: ExecStatus
    rows_digest: str | None = None  # digest of the (set of) result rows; equal digests = same result
    n_rows: int | None = None
    preview: str | None = None  # a few rows, rendered for prompts (execution response)
    error: str | None = None
    elapsed_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class AgentOutput(_Model):
    text: str
    sql: str | None = None  # parsed SQL; None if the output had no SQL block
    seed: int | None = None
    prompt_digest: str | None = None


class Critique(_Model):
    agent: str  # "val-sel" | "val-cond"
    text: str
    verdict: Verdict
    seed: int | None = None
    prompt_digest: str | None = None


class Fix(_Model):
    text: str
    sql: str | None
    exec: ExecInfo
    correct: bool
    seed: int | None = None
    prompt_digest: str | None = None


class Branch(_Model):
    critiques: dict[str, Critique] = Field(default_factory=dict)
    gate: bool = False
    fixes: list[Fix] = Field(default_factory=list)
    final_sql: str | None = None
    final_exec: ExecInfo | None = None
    final_correct: bool = False

    @property
    def fix(self) -> Fix | None:
        return self.fixes[0] if self.fixes else None


class Candidate(_Model):
    index: int
    planner: AgentOutput
    exec: ExecInfo
    correct: bool
    greedy: bool = False
    branches: list[Branch] = Field(default_factory=list)

    @property
    def main(self) -> Branch | None:
        """The inference branch (branch 0)."""
        return self.branches[0] if self.branches else None

    @property
    def final_sql(self) -> str | None:
        b = self.main
        return b.final_sql if b is not None else self.planner.sql

    @property
    def final_correct(self) -> bool:
        b = self.main
        return b.final_correct if b is not None else self.correct

    @property
    def final_exec(self) -> ExecInfo:
        b = self.main
        return b.final_exec if (b is not None and b.final_exec is not None) else self.exec


class RolloutRecord(_Model):
    question: Question
    gold_exec: ExecInfo
    candidates: list[Candidate]
    config_hash: str = ""
    models: dict[str, str] = Field(default_factory=dict)
    # An error record: the question could not be processed (a generation request that failed
    # for good, e.g. HTTP 400; a corrupt database). It has no candidates, is scored wrong on every
    # metric and counted apart; the reason names the stage ("planner: HTTP 400: ...").
    error: str | None = None

    @model_serializer(mode="wrap")
    def _drop_no_error(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("error") is None:
            data.pop("error", None)  # ordinary records keep the bytes they always had
        return data

    @property
    def question_id(self) -> str:
        return self.question.question_id


class RolloutHeader(_Model):
    """First line of a rollout file: which config produced it."""

    kind: Literal["header"] = "header"
    matsql_version: str
    config_hash: str
    config: dict[str, Any]
    created: str


class PreferencePair(_Model):
    """One preference pair; chosen and rejected always share ``prompt``."""

    question_id: str
    db_id: str
    agent: str
    mode: str
    prompt: list[dict[str, str]]  # chat messages up to the assistant turn
    prefix: str = ""  # assistant-turn prefix shared by chosen and rejected (e.g. "SELECT.")
    chosen: str
    rejected: str
    meta: dict[str, Any] = Field(default_factory=dict)


def dumps(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), ensure_ascii=False, sort_keys=False)
