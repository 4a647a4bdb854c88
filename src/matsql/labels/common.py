"""What every labeler shares: scored texts grouped by prompt, and how groups become pairs.

A labeler only decides a *score* for each generated text (chosen beats rejected iff its score
is higher); grouping by the exact prompt, deduplication, conflict removal and capping live here
once, so the modes differ only in their credit rule.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from matsql.agents.selector import Option
from matsql.backends.base import ChatPrompt
from matsql.draws import rng_for
from matsql.records import (
    Branch,
    Candidate,
    PreferencePair,
    RolloutRecord,
    record_prompt_digest,
)

DEFAULT_MAX_PAIRS_PER_PROMPT = 4


class PromptFn(Protocol):
    """Rebuilds the prompt an agent saw. Injected so that labelers stay pure (tests pass a fake
    schema; the CLI passes the benchmark's schema text).

    planner: ``(agent, record)``; validators: ``(agent, record, candidate)``; fixer:
    ``(agent, record, candidate, branch)``; selector: ``(agent, record, options=...)``.
    """

    def __call__(
        self,
        agent: str,
        record: RolloutRecord,
        candidate: Candidate | None = None,
        branch: Branch | None = None,
        options: Sequence[Option] | None = None,
    ) -> ChatPrompt: ...


@dataclass(frozen=True)
class Scored:
    """One generated text with its credit. ``score is None``: unusable (e.g. no fix to judge a
    collab label with); counted in the yield, never paired. ``meta`` says where it came from."""

    text: str
    score: float | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.text.strip()


@dataclass
class Group:
    """All texts generated for one exact prompt of one question (identical prompts merge)."""

    question_id: str
    db_id: str
    agent: str
    mode: str
    prompt: ChatPrompt
    items: list[Scored] = field(default_factory=list)

    @cached_property
    def prompt_digest(self) -> str:
        return record_prompt_digest(self.prompt)


class SFTExample(BaseModel):
    """One supervised example (prompt -> completion); the SFT twin of ``PreferencePair``."""

    model_config = ConfigDict(extra="forbid")

    question_id: str
    db_id: str
    agent: str
    mode: str
    prompt: list[dict[str, str]]
    prefix: str = ""
    completion: str  # continuation after ``prefix``
    meta: dict[str, Any] = Field(default_factory=dict)


def distinct_candidates(rec: RolloutRecord) -> list[Candidate]:
    """One candidate per distinct planner SQL text (whitespace and case folded), first kept: the
    same text gets the same critique, so SFT data holds it once."""
    seen: set[str] = set()
    out = []
    for c in rec.candidates:
        key = " ".join((c.planner.sql or "").split()).lower()
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


class GroupCollector:
    """Accumulates scored texts per (question, exact prompt), keeping first-seen order."""

    def __init__(self, agent: str, mode: str):
        self.agent, self.mode = agent, mode
        self._groups: dict[tuple[str, ChatPrompt], Group] = {}

    def add(self, record: RolloutRecord, prompt: ChatPrompt, item: Scored) -> None:
        key = (record.question_id, prompt)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = Group(
                record.question_id, record.question.db_id, self.agent, self.mode, prompt
            )
        g.items.append(item)

    @property
    def groups(self) -> list[Group]:
        return list(self._groups.values())


@dataclass(frozen=True)
class Distinct:
    """One distinct text of a group (after strip), with every occurrence of it."""

    text: str  # first occurrence, unstripped (leading whitespace matters to tokenisation)
    score: float
    occurrences: tuple[dict[str, Any], ...]


def distinct_texts(group: Group) -> tuple[list[Distinct], list[str]]:
    """Usable texts of a group deduplicated by stripped text; a text seen with two different
    scores (e.g. chosen on one branch, rejected on another) is dropped: it cannot be both.

    Returns (distinct texts in first-seen order, keys dropped as conflicting).
    """
    order: list[str] = []
    first: dict[str, str] = {}
    scores: dict[str, set[float]] = {}
    occ: dict[str, list[dict[str, Any]]] = {}
    for it in group.items:
        if it.score is None:
            continue
        k = it.key
        if k not in first:
            order.append(k)
            first[k] = it.text
            scores[k] = set()
            occ[k] = []
        scores[k].add(it.score)
        occ[k].append(it.meta)
    kept = [Distinct(first[k], next(iter(scores[k])), tuple(occ[k])) for k in order if len(scores[k]) == 1]
    conflicts = [k for k in order if len(scores[k]) > 1]
    return kept, conflicts


def uncapped_pairs(group: Group) -> list[tuple[Distinct, Distinct]]:
    """Every (chosen, rejected) with a strictly higher chosen score, in first-seen order."""
    texts, _ = distinct_texts(group)
    return [(a, b) for a in texts for b in texts if a.score > b.score]


def _summary(occurrences: Sequence[dict[str, Any]], name: str) -> Any:
    """A meta field shared by all occurrences (e.g. the verdict of one text), else None."""
    values = {json.dumps(o.get(name), sort_keys=True) for o in occurrences}
    return occurrences[0].get(name) if len(values) == 1 else None


def make_pair(group: Group, chosen: Distinct, rejected: Distinct) -> PreferencePair:
    meta: dict[str, Any] = {
        "prompt_digest": group.prompt_digest,
        "candidates": sorted(
            {o["candidate"] for o in (*chosen.occurrences, *rejected.occurrences) if "candidate" in o}
        ),
        "chosen_score": chosen.score,
        "rejected_score": rejected.score,
        "chosen": list(chosen.occurrences),
        "rejected": list(rejected.occurrences),
    }
    if any("verdict" in o for o in chosen.occurrences):  # validator pairs: which verdict beat which
        meta["chosen_verdict"] = _summary(chosen.occurrences, "verdict")
        meta["rejected_verdict"] = _summary(rejected.occurrences, "verdict")
    return PreferencePair(
        question_id=group.question_id,
        db_id=group.db_id,
        agent=group.agent,
        mode=group.mode,
        prompt=group.prompt.as_messages(),
        prefix=group.prompt.prefix,
        chosen=chosen.text,
        rejected=rejected.text,
        meta=meta,
    )


def _sample_sorted(n: int, cap: int | None, rng: random.Random) -> list[int]:
    """Indices of a seeded sample of ``cap`` out of ``n`` (all if no cap), in original order."""
    if cap is None or n <= cap:
        return list(range(n))
    return sorted(rng.sample(range(n), cap))


def pair_groups(
    groups: Iterable[Group],
    *,
    max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
    max_pairs_per_question: int | None = None,
    seed: int = 0,
) -> list[PreferencePair]:
    """Groups -> pairs: every distinct chosen x every distinct rejected text, capped per prompt
    and then per question by seeded samples (keyed on the prompt / question, so deterministic)."""
    for name, cap in (
        ("max_pairs_per_prompt", max_pairs_per_prompt),
        ("max_pairs_per_question", max_pairs_per_question),
    ):
        if cap is not None and cap < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {cap}")
    by_question: dict[str, list[PreferencePair]] = {}
    for g in groups:
        cands = uncapped_pairs(g)
        keep = _sample_sorted(
            len(cands), max_pairs_per_prompt, rng_for(seed, "prompt", g.question_id, g.prompt_digest)
        )
        by_question.setdefault(g.question_id, []).extend(make_pair(g, *cands[i]) for i in keep)
    out: list[PreferencePair] = []
    for qid, pairs in by_question.items():
        keep = _sample_sorted(len(pairs), max_pairs_per_question, rng_for(seed, "question", qid))
        out.extend(pairs[i] for i in keep)
    return out


def check_agent(agent: str, allowed: Sequence[str], mode: str) -> None:
    if agent not in allowed:
        raise ValueError(f"mode {mode!r} has no labels for agent {agent!r}; it labels {', '.join(allowed)}")


#: A mode's grouping: ``groups_<mode>(records, agent, prompt_fn, **opts) -> list[Group]``.
GroupsFn = Callable[..., list[Group]]


class LabelFn(Protocol):
    """``label_<mode>(records, agent, prompt_fn, *, caps, seed, **opts) -> list[PreferencePair]``."""

    def __call__(
        self,
        records: Sequence[RolloutRecord],
        agent: str,
        prompt_fn: PromptFn,
        *,
        max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
        max_pairs_per_question: int | None = None,
        seed: int = 0,
        **opts: Any,
    ) -> list[PreferencePair]: ...


def make_labeler(groups_fn: GroupsFn, *, seeded: bool = False) -> LabelFn:
    """``label_<mode>`` from ``groups_<mode>``: modes differ only in how they score and group, so
    pairing (caps, seed) is written once. ``seeded``: the grouping takes ``seed`` as well (the
    selector's option order); other ``opts`` (e.g. ``with_verdicts``) go to the grouping as is."""

    def label(
        records: Sequence[RolloutRecord],
        agent: str,
        prompt_fn: PromptFn,
        *,
        max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
        max_pairs_per_question: int | None = None,
        seed: int = 0,
        **opts: Any,
    ) -> list[PreferencePair]:
        if seeded:
            opts["seed"] = seed
        return pair_groups(
            groups_fn(records, agent, prompt_fn, **opts),
            max_pairs_per_prompt=max_pairs_per_prompt,
            max_pairs_per_question=max_pairs_per_question,
            seed=seed,
        )

    name = groups_fn.__name__.replace("groups_", "label_", 1)
    label.__name__ = label.__qualname__ = name
    label.__module__ = groups_fn.__module__
    label.__doc__ = f"Preference pairs from ``{groups_fn.__name__}``'s groups (capped, seeded)."
    return label
