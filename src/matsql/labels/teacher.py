"""Rule-based validator teacher: paper-format critiques from a candidate, the gold query and
both execution results.

The verdict is execution-grounded: ``correct`` iff the candidate ran and its result equals the
gold result (equal ``rows_digest``, i.e. BIRD EX). The text explains it by the first structural
difference sqlglot finds between candidate and gold, in the validator's own area: the SELECT
list for ``val-sel``, tables/joins/WHERE/GROUP BY/HAVING/ORDER BY/LIMIT for ``val-cond``. A
correct candidate that differs in form is described as equivalent; a wrong candidate with no
difference in the validator's area gets a critique that says so and still concludes
``incorrect`` (that is what independent labelling rewards). Phrases live in
``templates/teacher.yaml``; the format is :func:`matsql.agents.validator.render_target`.

An LLM teacher (issue 21, ``matsql train sft-data --teacher AGENTS.yaml``) can write the text
instead: any backend from :func:`matsql.backends.registry.make_backend`, prompted by the
versioned template ``templates/teacher-llm-<agent>.yaml`` with both execution results and the
execution verdict. The verdict never comes from the model: a critique whose ``Conclude:``
disagrees with execution (or that has none, or that names the hidden reference) is resampled up
to ``resamples`` times, then replaced by the rule-based critique, and :class:`TeacherReport`
counts both.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from matsql.agents import validator
from matsql.agents.execution import render_execution
from matsql.agents.parsing import _CONCLUDE
from matsql.agents.templates import Template
from matsql.agents.validator import render_target
from matsql.backends.base import Backend, ChatPrompt
from matsql.labels.sqlparts import Item, Parts, aggregate_of, parse_parts
from matsql.records import ExecInfo, Question, digest
from matsql.team import AgentSpec, _stop_list, _unknown_key_error, backend_keys

AGENTS = ("val-sel", "val-cond")


@dataclass(frozen=True)
class TeacherCritique:
    agent: str
    text: str  # the continuation after the validator prefix, ending in "Conclude: <verdict>"
    verdict: str  # "correct" | "incorrect"
    reason: str  # the rule that produced the text (e.g. "where_missing", "exec_error", "right")


@dataclass(frozen=True)
class Diff:
    reason: str
    gold: str = ""
    cand: str = ""


@cache
def phrases() -> dict[str, Any]:
    path = resources.files("matsql.labels").joinpath("templates", "teacher.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def verdict_of(cand_exec: ExecInfo | None, gold_exec: ExecInfo) -> str:
    same = (
        cand_exec is not None
        and cand_exec.ok
        and cand_exec.rows_digest is not None
        and cand_exec.rows_digest == gold_exec.rows_digest
    )
    return "correct" if same else "incorrect"


def _code(items: list[str]) -> str:
    quoted = [f"`{x}`" for x in items]
    if not quoted:
        return "nothing"
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _texts(items: list[Item], keys: list[str] | set[str] | None = None) -> list[str]:
    return [i.text for i in items if keys is None or i.key in keys]


def _set_op_diff(g: Parts, c: Parts) -> Diff | None:
    if g.set_op == c.set_op:
        return None
    names = phrases()["common"]["set_ops"]
    return Diff("set_op", names[g.set_op or "none"], names[c.set_op or "none"])


def select_diffs(g: Parts, c: Parts) -> list[Diff]:
    """SELECT-list differences, most important first."""
    out = []
    if (d := _set_op_diff(g, c)) is not None:
        out.append(d)
    gk, ck = [i.key for i in g.select], [i.key for i in c.select]
    missing = [i for i in g.select if i.key not in ck]
    extra = [i for i in c.select if i.key not in gk]
    if missing and extra:
        reason = "changed"
        if len(missing) == 1 and len(extra) == 1:
            (ga, garg), (ca, carg) = aggregate_of(missing[0]), aggregate_of(extra[0])
            if (ga or ca) and ga != ca and (garg == carg or "*" in (garg, carg)):
                reason = "aggregate"
        out.append(Diff(reason, _code(_texts(missing)), _code(_texts(extra))))
    elif missing:
        out.append(Diff("missing", _code(_texts(missing))))
    elif extra:
        out.append(Diff("extra", cand=_code(_texts(extra))))
    elif gk != ck:
        out.append(Diff("order", _code(_texts(g.select)), _code(_texts(c.select))))
    if g.distinct and not c.distinct:
        out.append(Diff("distinct_missing", "DISTINCT", "no DISTINCT"))
    elif c.distinct and not g.distinct:
        out.append(Diff("distinct_extra", "no DISTINCT", "DISTINCT"))
    return out


def _paired(name: str, gold: list[Item], cand: list[Item]) -> Diff | None:
    """Missing/extra items; a missing and an extra item on the same columns (or the only
    missing and the only extra one) is a change."""
    ck, gk = {i.key for i in cand}, {i.key for i in gold}
    missing = [i for i in gold if i.key not in ck]
    extra = [i for i in cand if i.key not in gk]
    for m in missing:
        for e in extra:
            if m.columns & e.columns:
                return Diff(f"{name}_changed", _code([m.text]), _code([e.text]))
    if (missing and extra and name in ("join", "group")) or (len(missing) == 1 and len(extra) == 1):
        return Diff(f"{name}_changed", _code(_texts(missing)), _code(_texts(extra)))
    if missing:
        return Diff(f"{name}_missing", _code(_texts(missing)))
    if extra:
        return Diff(f"{name}_extra", cand=_code(_texts(extra)))
    return None


def condition_diffs(g: Parts, c: Parts) -> list[Diff]:
    """Differences in tables, joins, WHERE, GROUP BY, HAVING, ORDER BY, LIMIT, in that order."""
    out = []
    if (d := _set_op_diff(g, c)) is not None:
        out.append(d)
    missing = [t for t in g.tables if t not in c.tables]
    extra = [t for t in c.tables if t not in g.tables]
    if missing:
        out.append(Diff("tables_missing", _code(missing)))
    elif extra:
        out.append(Diff("tables_extra", cand=_code(extra)))
    for name, gi, ci in (
        ("join", g.joins, c.joins),
        ("where", g.where, c.where),
        ("group", g.group_by, c.group_by),
        ("having", g.having, c.having),
    ):
        if (d := _paired(name, gi, ci)) is not None:
            out.append(d)
    if [i.key for i in g.order_by] != [i.key for i in c.order_by]:
        reason = (
            "order_changed"
            if g.order_by and c.order_by
            else ("order_missing" if g.order_by else "order_extra")
        )
        out.append(Diff(reason, _code(_texts(g.order_by)), _code(_texts(c.order_by))))
    if g.limit != c.limit:
        reason = "limit_changed" if g.limit and c.limit else ("limit_missing" if g.limit else "limit_extra")
        out.append(Diff(reason, g.limit or "", c.limit or ""))
    return out


def _opening(agent: str, g: Parts, c: Parts) -> str:
    p = phrases()[agent]
    if agent == "val-sel":
        return p["opening"].format(gold=_code(_texts(g.select)), cand=_code(_texts(c.select)))
    return p["opening"].format(cand=_code(c.tables))


def critique(
    agent: str,
    cand_sql: str | None,
    cand_exec: ExecInfo | None,
    gold_sql: str,
    gold_exec: ExecInfo | None,
) -> TeacherCritique | None:
    """The teacher's critique for one validator, or None when gold did not run (no ground truth)."""
    if agent not in AGENTS:
        raise ValueError(f"unknown validator {agent!r}; expected one of {AGENTS}")
    if gold_exec is None or not gold_exec.ok:
        return None
    verdict = verdict_of(cand_exec, gold_exec)
    common, p = phrases()["common"], phrases()[agent]

    def done(body: str, reason: str) -> TeacherCritique:
        return TeacherCritique(agent, render_target(body, verdict), verdict, reason)

    if not cand_sql or not cand_sql.strip() or (cand_exec is not None and cand_exec.status == "no_sql"):
        return done(common["no_sql"], "no_sql")
    if cand_exec is not None and cand_exec.status == "timeout":
        return done(common["timeout"], "timeout")
    if cand_exec is None or cand_exec.status != "ok":
        error = (cand_exec.error if cand_exec else None) or "not executed"
        return done(common["exec_error"].format(error=error.strip().splitlines()[0][:200]), "exec_error")
    g, c = parse_parts(gold_sql), parse_parts(cand_sql)
    if c is None or g is None:
        if verdict == "correct":
            return done(p["right"], "right")
        return done(common["unparsable"] if c is None else p["same_but_wrong"], "unparsable")
    diffs = select_diffs(g, c) if agent == "val-sel" else condition_diffs(g, c)
    opening = _opening(agent, g, c)
    if verdict == "correct":
        if not diffs:
            return done(f"{opening} {p['right']}", "right")
        d = diffs[0]
        detail = f"{d.cand or 'no ' + d.gold} rather than {d.gold or 'no ' + d.cand}"
        return done(f"{opening} {p['equivalent'].format(detail=detail)}", f"equivalent:{d.reason}")
    if not diffs:
        body, reason = f"{opening} {p['same_but_wrong']}", "same_but_wrong"
    else:
        d = diffs[0]
        body, reason = f"{opening} {p[d.reason].format(gold=d.gold, cand=d.cand)}", d.reason
    if agent == "val-cond" and cand_exec.n_rows == 0 and (gold_exec.n_rows or 0) > 0:
        body += " " + common["empty_result"]
    return done(body, reason)


def critiques(
    cand_sql: str | None, cand_exec: ExecInfo | None, gold_sql: str, gold_exec: ExecInfo | None
) -> dict[str, TeacherCritique]:
    """Both validators' teacher critiques ({} when gold did not run)."""
    out = {}
    for agent in AGENTS:
        tc = critique(agent, cand_sql, cand_exec, gold_sql, gold_exec)
        if tc is not None:
            out[agent] = tc
    return out


# ---------------------------------------------------------------- LLM teacher (issue 21)

RULE_TEACHER = "rule-based"  # what a row written by the rule-based teacher names as its teacher
TEMPLATE_FIELDS = frozenset(
    {"schema", "question", "evidence", "sql", "execution", "gold_sql", "gold_execution", "verdict", "outcome"}
)
OUTCOMES = ("same", "different", "failed")


class _TemplateFile(BaseModel):
    """Schema of ``templates/teacher-llm-<agent>.yaml``."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    system: str = ""
    user: str
    prefix: str
    stop: list[str] = Field(default_factory=list)
    outcomes: dict[Literal["same", "different", "failed"], str]
    reject_if_contains: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class TeacherTemplate:
    name: str  # "teacher-llm-val-sel"
    version: int
    digest: str  # of the file's text: the config hash covers edits that forgot to bump version
    template: Template
    outcomes: dict[str, str]
    stop: tuple[str, ...]
    reject_if_contains: tuple[str, ...]

    @property
    def id(self) -> str:
        """What each example records as its template: ``name@vN``."""
        return f"{self.name}@v{self.version}"


def parse_teacher_template(name: str, text: str, agent: str) -> TeacherTemplate:
    """Validate a teacher template's text: schema, known fields only, the student's prefix."""
    try:
        f = _TemplateFile.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as e:
        raise ValueError(f"teacher template {name}: {e}") from e
    used = {fld for _, fld, _, _ in string.Formatter().parse(f.user) if fld is not None}
    if unknown := used - TEMPLATE_FIELDS:
        raise ValueError(
            f"teacher template {name}: unknown fields {sorted(unknown)}; known {sorted(TEMPLATE_FIELDS)}"
        )
    if missing := set(OUTCOMES) - set(f.outcomes):
        raise ValueError(f"teacher template {name}: outcomes lack {sorted(missing)}")
    if f.prefix != validator.prefix(agent):
        raise ValueError(
            f"teacher template {name}: prefix {f.prefix!r} is not {agent}'s {validator.prefix(agent)!r} "
            "(the critique becomes the student's completion after that prefix)"
        )
    return TeacherTemplate(
        name=name,
        version=f.version,
        digest=digest(text),  # the short text digest every record uses
        template=Template(name, f.version, f.system, f.user, f.prefix, {}),
        outcomes=dict(f.outcomes),
        stop=tuple(f.stop),
        reject_if_contains=tuple(s.lower() for s in f.reject_if_contains),
    )


@cache
def teacher_template(agent: str) -> TeacherTemplate:
    """The shipped prompt template of the LLM teacher for ``agent``."""
    if agent not in AGENTS:
        raise ValueError(f"unknown validator {agent!r}; expected one of {AGENTS}")
    name = f"teacher-llm-{agent}"
    path = resources.files("matsql.labels").joinpath("templates", f"{name}.yaml")
    return parse_teacher_template(name, path.read_text(encoding="utf-8"), agent)


def teacher_prompt(
    agent: str,
    q: Question,
    schema: str,
    cand_sql: str | None,
    cand_exec: ExecInfo | None,
    gold_exec: ExecInfo,
    verdict: str,
) -> ChatPrompt:
    """The teacher's prompt: the student's view plus the reference, both results and the verdict."""
    tpl = teacher_template(agent)
    if verdict == "correct":
        outcome = tpl.outcomes["same"]
    elif cand_exec is None or not cand_exec.ok:
        outcome = tpl.outcomes["failed"]
    else:
        outcome = tpl.outcomes["different"]
    return tpl.template.prompt(
        schema=schema,
        question=q.question,
        evidence=q.evidence or "None",
        sql=cand_sql or "",
        execution=render_execution(cand_exec),
        gold_sql=q.gold_sql.strip().rstrip(";"),
        gold_execution=render_execution(gold_exec),
        verdict=verdict,
        outcome=outcome,
    )


_CONCLUDE_AT = re.compile(r"(?:\*\*|__)?conclude\s*:", re.IGNORECASE)  # markdown bold too


def accept(text: str, verdict: str, tpl: TeacherTemplate) -> tuple[str | None, str]:
    """``(target, "ok")`` for a teacher completion that concludes ``verdict``, else ``(None, why)``.

    The target is the text before the first ``Conclude:`` re-rendered in the trained format, so
    whatever the model wrote after its verdict never reaches the student.
    """
    m = _CONCLUDE_AT.search(text)
    if m is None:
        return None, "no_verdict"
    said = {v.lower() for v in _CONCLUDE.findall(text[m.start() :])}
    if not said:
        return None, "no_verdict"
    if said != {verdict}:
        return None, "disagree"
    body = text[: m.start()].strip()
    if not body:
        return None, "empty"
    low = body.lower()
    if any(s in low for s in tpl.reject_if_contains):
        return None, "mentions_reference"
    return render_target(body, verdict), "ok"


@dataclass(frozen=True)
class LLMTeacher:
    """A teacher entry of a team file: the backend settings and decoding, and how to resample."""

    backend: dict[str, Any]  # the entry for make_backend
    model_id: str  # what examples record as their teacher, e.g. "openai:http://node1:8000/qwen72b"
    temperature: float = 0.7
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    resamples: int = 3
    seed: int = 0
    source: str = ""

    def identity(self, agents: Sequence[str]) -> dict[str, Any]:
        """Everything that decides the teacher's text (secrets left out): what the config hash covers."""
        return {
            "model": self.model_id,
            "backend": {k: v for k, v in sorted(self.backend.items()) if not _secret(k)},
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "resamples": self.resamples,
            "seed": self.seed,
            "templates": {
                a: {"id": teacher_template(a).id, "digest": teacher_template(a).digest} for a in agents
            },
        }


def _secret(key: str) -> bool:
    k = key.lower()
    return k == "api_key" or "secret" in k or "password" in k


def load_teacher(path: str | Path, *, resamples: int = 3, seed: int = 0) -> LLMTeacher:
    """The teacher of a team file: a top-level ``teacher:`` entry (the file stays a valid team
    for rollouts) or, in a teacher-only file, ``agents: {teacher: {...}}``; merged over the
    file's ``defaults`` and key-checked like an agent entry."""
    from matsql.fileio import read_yaml

    path = Path(path)
    data = read_yaml(path, "teacher file", ValueError, missing=FileNotFoundError)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with a teacher entry")
    in_agents = (data.get("agents") or {}).get("teacher")
    top = data.get("teacher")
    if (in_agents is None) == (top is None):
        raise ValueError(
            f"{path}: name the teacher once, as `agents: {{teacher: ...}}` or a top-level `teacher:` entry"
        )
    entry = in_agents if top is None else top
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: the teacher entry must be a mapping, got {entry!r:.60}")
    merged = {**(data.get("defaults") or {}), **entry}
    if "n" in merged:
        raise ValueError(
            f"{path}: the teacher writes one critique per candidate; set --teacher-resamples, not n"
        )
    decoding_keys = ("temperature", "max_tokens", "stop")
    allowed = backend_keys(str(merged.get("backend", "local")))  # None: make_backend names the kind
    if allowed is not None:
        for key in merged:
            if key not in allowed | set(decoding_keys):
                raise _unknown_key_error(f"{path}: teacher", str(key), allowed | set(decoding_keys))
    decoding = {k: merged.pop(k) for k in decoding_keys if k in merged}
    for key in ("adapter", "model"):
        v = merged.get(key)
        if isinstance(v, str) and v.startswith(("./", "../")):
            merged[key] = str((path.parent / v).resolve())
    if "model" not in merged:
        raise ValueError(f"{path}: the teacher entry needs a model")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    ident = f"{merged.get('backend', 'local')}:{AgentSpec('teacher', merged).model_id()}"
    return LLMTeacher(
        backend=merged,
        model_id=ident,
        temperature=float(decoding.get("temperature", 0.7)),
        max_tokens=int(decoding.get("max_tokens", 256)),
        stop=tuple(_stop_list(decoding.get("stop"), f"{path}: teacher")),
        resamples=resamples,
        seed=seed,
        source=str(path),
    )


def attempt_seed(seed: int, attempt: int) -> int:
    """The sampling seed of the teacher's ``attempt``-th try (0 = first): a fresh draw per resample."""
    return int(hashlib.sha256(f"teacher:{seed}:{attempt}".encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class TeacherJob:
    agent: str
    prompt: ChatPrompt  # the teacher's prompt (teacher_prompt)
    rule: TeacherCritique  # the execution verdict, and the text to fall back on


@dataclass(frozen=True)
class Written:
    """One critique as it goes into the dataset, with the teacher that wrote it."""

    text: str
    verdict: str
    reason: str  # "llm", or "fallback:<rule reason>" when the rule-based teacher stepped in
    teacher: str
    template: str
    seed: int | None  # the sampling seed of the accepted attempt; None for the rule-based text
    attempts: int


@dataclass
class TeacherReport:
    """How the LLM teacher fared: printed by the CLI and kept in the dataset's summary."""

    critiques: int = 0
    first_try: int = 0
    resamples: int = 0  # extra generations asked after a rejected critique
    recovered: int = 0  # critiques accepted after resampling
    fallbacks: int = 0  # critiques replaced by the rule-based one
    rejected: Counter = field(default_factory=Counter)  # why: disagree, no_verdict, empty, mentions_reference

    def as_dict(self) -> dict[str, Any]:
        return {
            "critiques": self.critiques,
            "first_try": self.first_try,
            "resamples": self.resamples,
            "recovered": self.recovered,
            "fallbacks": self.fallbacks,
            "rejected": dict(sorted(self.rejected.items())),
        }

    def line(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"{self.critiques} critiques: {self.first_try} accepted first try, {self.resamples} resamples "
            f"({self.recovered} recovered), {self.fallbacks} fallbacks to rule-based; rejected: {why}"
        )


def write_critiques(
    backend: Backend, teacher: LLMTeacher, jobs: Sequence[TeacherJob]
) -> tuple[list[Written], TeacherReport]:
    """The teacher's critique for each job: one batched call per attempt over the jobs still
    open; jobs with no acceptable critique after ``teacher.resamples`` resamples fall back."""
    report = TeacherReport(critiques=len(jobs))
    out: list[Written | None] = [None] * len(jobs)
    open_ = list(range(len(jobs)))
    for attempt in range(teacher.resamples + 1):
        if not open_:
            break
        if attempt:
            report.resamples += len(open_)
        seed = attempt_seed(teacher.seed, attempt)
        by_stop: dict[tuple[str, ...], list[int]] = {}
        for i in open_:  # templates may differ in stop strings; the teacher's own are added
            by_stop.setdefault(teacher.stop + teacher_template(jobs[i].agent).stop, []).append(i)
        still = []
        for stop, idx in by_stop.items():
            texts = backend.generate(
                [jobs[i].prompt for i in idx],
                n=1,
                temperature=teacher.temperature,
                max_tokens=teacher.max_tokens,
                stop=list(stop) or None,
                seed=seed,
            )
            for i, t in zip(idx, texts, strict=True):
                job = jobs[i]
                tpl = teacher_template(job.agent)
                target, why = accept(t[0], job.rule.verdict, tpl)
                if target is None:
                    report.rejected[why] += 1
                    still.append(i)
                    continue
                out[i] = Written(target, job.rule.verdict, "llm", teacher.model_id, tpl.id, seed, attempt + 1)
                if attempt:
                    report.recovered += 1
                else:
                    report.first_try += 1
        open_ = sorted(still)
    rule_id = f"teacher@v{phrases()['version']}"
    for i in open_:
        r = jobs[i].rule
        out[i] = Written(
            r.text, r.verdict, f"fallback:{r.reason}", RULE_TEACHER, rule_id, None, teacher.resamples + 1
        )
    report.fallbacks = len(open_)
    return [w for w in out if w is not None], report
