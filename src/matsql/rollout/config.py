"""Rollout settings. Everything that changes records goes into the config hash."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

from matsql.benchmarks.schema import DEFAULT_STYLE, styles
from matsql.rollout.gating import GatePolicy


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    benchmark: str
    data: str | None = None  # benchmark root override
    k: int = Field(8, ge=1)
    temperature: float = 1.0  # planner sampling temperature
    # candidate 0 decoded greedily (T=0), which gives planner@1 / pipeline@1; off by default: the
    # users' K=8 candidates are all sampled at T=1.0 (issue 16), so greedy-first is an option
    greedy_first: bool = False
    gate: GatePolicy = "exec_error_or_critique"
    validators: list[str] = Field(default_factory=lambda: ["val-sel", "val-cond"])
    branches: int = Field(1, ge=1)  # critique samples per candidate (label-time rollouts use K)
    fix_all: bool = False  # label-time: run the fixer on every branch, gated or not
    fixer_samples: int = Field(1, ge=1)  # fixer samples per branch (E1 data uses several)
    fixer_temperature: float | None = None  # fixer sampling temperature; None: the agent's own
    seed: int = 0
    batch_questions: int = Field(16, ge=1)  # fixed question batches: resume reproduces them
    limit: int | None = None  # first N questions only
    sample: int | None = None  # a seeded random N questions (kept in benchmark order): unbiased slices
    offset: int = 0
    parts: str | None = None  # "sft=600,label=128,heldout=1000": disjoint seeded parts of the questions
    part: str | None = None  # which of ``parts`` this rollout runs on
    parts_seed: int = 0  # the partition's seed: the same for every stage, whatever its run seed
    shard: tuple[int, int] | None = None  # (index, count): questions with position % count == index
    missing: str = "wrong"  # wrong | skip | error
    exec_timeout_s: float = 30.0
    planner_from: str | None = None  # reuse planner candidates of an earlier rollout file
    team_digest: str = ""
    # the prompts' schema layout (benchmarks/data/schema_format.yaml); the header records it, so
    # labels, selection and SFT data rebuild the prompts this run generated from
    schema_style: str = DEFAULT_STYLE

    @field_validator("schema_style")
    @classmethod
    def _known_style(cls, v: str) -> str:
        if v not in styles():
            raise ValueError(f"schema style {v!r}: expected one of {', '.join(styles())}")
        return v

    @property
    def greedy_candidate(self) -> bool:
        """Candidate 0 is decoded greedily: asked for, or implied by T=0 (every sample is greedy;
        candidate 0 is marked so, as before all-sampled became the default)."""
        return self.greedy_first or self.temperature == 0

    def digest(self) -> str:
        d = self.model_dump(exclude={"limit", "offset", "shard", "sample", "parts", "part", "parts_seed"})
        if d["fixer_temperature"] is None:  # unset: hashes of earlier runs stay valid
            del d["fixer_temperature"]
        # greedy_first is hashed as what it does. It was on by default until all-sampled became
        # the default; with --planner-from it does nothing (candidates are copied) and at T=0 it
        # is implied, so those runs hash as they did (True) whatever the flag says. Only a run
        # that generates sampled planner candidates hashes the flag as given.
        d["greedy_first"] = self.greedy_candidate or self.planner_from is not None
        if d["schema_style"] == DEFAULT_STYLE:  # the default: hashes of earlier runs stay valid
            del d["schema_style"]
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
