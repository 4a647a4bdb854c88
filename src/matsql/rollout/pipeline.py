"""The pipeline over K candidates for a batch of questions.

planner (K samples) -> execute -> validators (``branches`` critiques per candidate and validator)
-> gate -> fixer -> final candidates. One code path serves inference (branches=1, gated fixer)
and label-time rollouts (branches=M, ``fix_all``: the fixer runs on every branch so that every
label mode can be computed from the record without re-running a model).

Reproducibility: each generate call gets a seed derived from (run seed, stage) alone. The
backends key each sample's random stream on (seed, prompt, sample index), so a question's
outputs do not depend on which batch or shard it ran in; batches are also fixed by question
order, so even a backend whose sampling depends on the batch recomputes a partially written
batch exactly on resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matsql.agents import fixer, planner, validator
from matsql.backends.base import Backend, ChatPrompt
from matsql.records import (
    AgentOutput,
    Branch,
    Candidate,
    Critique,
    ExecInfo,
    Fix,
    Question,
    RolloutRecord,
    digest,
)
from matsql.rollout.config import RolloutConfig
from matsql.rollout.gating import should_fix
from matsql.team import Team


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage's generate call: independent of the batch (see module docstring)."""
    h = hashlib.sha256(f"{seed}||{stage}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def prompt_digest(p: ChatPrompt) -> str:
    return digest("\x1e".join(f"{r}\x1f{c}" for r, c in p.messages) + "\x1d" + p.prefix)


@dataclass
class Services:
    """What a batch needs from the outside world (injected: tests pass fakes)."""

    team: Team
    backends: dict[str, Backend]
    schema_of: Callable[[str], str]
    db_path_of: Callable[[str], Any]
    has_db: Callable[[str], bool]
    execute: Callable[[list[tuple[Any, str]]], list[Any]]  # (db_path, sql) -> ExecResult
    ex_match: Callable[[Any, Any], bool]  # (pred rows, gold rows) -> bool
    to_exec_info: Callable[[Any], ExecInfo]


def fixer_temperature(cfg: RolloutConfig, team: Team) -> float:
    """``--fixer-temperature`` when given, else the fixer agent's own (greedy at inference)."""
    return team["fixer"].temperature if cfg.fixer_temperature is None else cfg.fixer_temperature


def sampling_problems(cfg: RolloutConfig, team: Team) -> list[str]:
    """Settings that would silently write identical samples: several critiques or fixes per
    prompt decoded greedily (label-time data then has no contrast to learn from)."""
    out = []
    if cfg.branches > 1:
        for v in cfg.validators:
            if v in team.agents and team[v].temperature <= 0:
                out.append(
                    f"--branches {cfg.branches} with {v} at temperature {team[v].temperature}: "
                    f"every branch would get the same critique; give {v} a temperature > 0"
                )
    if cfg.fixer_samples > 1 and "fixer" in team.agents:
        t = fixer_temperature(cfg, team)
        if t <= 0:
            out.append(
                f"--fixer-samples {cfg.fixer_samples} at fixer temperature {t}: the samples would be "
                "identical; pass --fixer-temperature 1.0 (E1 samples fixes at T=1.0)"
            )
    return out


def _generate(
    svc: Services, agent: str, prompts: list[ChatPrompt], n: int, temperature: float, seed: int
) -> list[list[str]]:
    if not prompts:
        return []
    spec = svc.team[agent]
    return svc.backends[agent].generate(
        prompts, n=n, temperature=temperature, max_tokens=spec.max_tokens, stop=spec.stop or None, seed=seed
    )


def _no_sql_exec() -> ExecInfo:
    return ExecInfo(status="no_sql", error="no SQL found in the output")


def _run_sqls(
    svc: Services, jobs: list[tuple[Question, str | None]], gold: dict[str, Any]
) -> list[tuple[ExecInfo, bool]]:
    """Execute (question, sql) jobs; return (ExecInfo, correct) per job."""
    todo = [(svc.db_path_of(q.db_id), sql) for q, sql in jobs if sql]
    results = iter(svc.execute(todo)) if todo else iter(())
    out: list[tuple[ExecInfo, bool]] = []
    for q, sql in jobs:
        if not sql:
            out.append((_no_sql_exec(), False))
            continue
        res = next(results)
        info = svc.to_exec_info(res)
        g = gold.get(q.question_id)
        ok = info.status == "ok" and g is not None and g.status == "ok" and svc.ex_match(res.rows, g.rows)
        out.append((info, bool(ok)))
    return out


def run_batch(
    questions: Sequence[Question],
    cfg: RolloutConfig,
    svc: Services,
    reuse_planner: dict[str, list[Candidate]] | None = None,
    config_hash: str = "",
) -> list[RolloutRecord]:
    models = {name: spec.model_id() for name, spec in svc.team.agents.items()}

    # Gold results (once per question). Missing DBs give a record with no candidates: scored wrong.
    runnable = [q for q in questions if svc.has_db(q.db_id)]
    gold_results = svc.execute([(svc.db_path_of(q.db_id), q.gold_sql) for q in runnable]) if runnable else []
    gold = {q.question_id: r for q, r in zip(runnable, gold_results, strict=True)}

    # 1. Planner candidates.
    cands: dict[str, list[Candidate]] = {}
    if reuse_planner is not None:
        for q in runnable:
            if q.question_id not in reuse_planner:
                raise KeyError(f"--planner-from has no record for question {q.question_id}")
            cands[q.question_id] = [
                c.model_copy(update={"branches": []}, deep=True) for c in reuse_planner[q.question_id]
            ]
    elif runnable:
        prompts = [planner.build(q, svc.schema_of(q.db_id)) for q in runnable]
        outs: list[list[tuple[str, int, bool]]] = [[] for _ in runnable]
        n_sampled = cfg.k
        if cfg.greedy_first:
            s = stage_seed(cfg.seed, "planner-greedy")
            for i, texts in enumerate(_generate(svc, "planner", prompts, 1, 0.0, s)):
                outs[i].append((texts[0], s, True))
            n_sampled -= 1
        if n_sampled > 0:
            s = stage_seed(cfg.seed, "planner-sample")
            for i, texts in enumerate(_generate(svc, "planner", prompts, n_sampled, cfg.temperature, s)):
                outs[i].extend((t, s, False) for t in texts)
        jobs = [(q, planner.parse(t)) for q, o in zip(runnable, outs, strict=True) for t, _, _ in o]
        execs = iter(_run_sqls(svc, jobs, gold))
        for q, p, o in zip(runnable, prompts, outs, strict=True):
            pd = prompt_digest(p)
            lst = []
            for idx, (text, s, greedy) in enumerate(o):
                info, ok = next(execs)
                lst.append(
                    Candidate(
                        index=idx,
                        planner=AgentOutput(text=text, sql=planner.parse(text), seed=s, prompt_digest=pd),
                        exec=info,
                        correct=ok,
                        greedy=greedy,
                    )
                )
            cands[q.question_id] = lst

    # 2. Validators: `branches` critiques per candidate with SQL.
    qmap = {q.question_id: q for q in runnable}
    targets = [(qid, c) for qid, lst in cands.items() for c in lst if c.planner.sql]
    critiques: dict[tuple[str, int], dict[str, list[Critique]]] = {}
    for v in cfg.validators:
        spec = svc.team[v]
        prompts = [
            validator.build(v, qmap[qid], svc.schema_of(qmap[qid].db_id), c.planner.sql, c.exec)
            for qid, c in targets
        ]
        s = stage_seed(cfg.seed, v)
        outs_v = _generate(svc, v, prompts, cfg.branches, spec.temperature, s)
        for (qid, c), p, texts in zip(targets, prompts, outs_v, strict=True):
            pd = prompt_digest(p)
            critiques.setdefault((qid, c.index), {})[v] = [
                Critique(agent=v, text=t, verdict=validator.parse(t), seed=s, prompt_digest=pd) for t in texts
            ]

    # 3. Branches + gate.
    branch_slots: list[tuple[str, Candidate, Branch]] = []
    for qid, lst in cands.items():
        for c in lst:
            per_v = critiques.get((qid, c.index), {})
            n_br = cfg.branches if per_v else 1
            for j in range(n_br):
                crit = {v: per_v[v][j] for v in cfg.validators if v in per_v}
                gate = should_fix(cfg.gate, c.exec.ok, {v: x.verdict for v, x in crit.items()})
                b = Branch(critiques=crit, gate=gate)
                c.branches.append(b)
                branch_slots.append((qid, c, b))

    # 4. Fixer on gated branches (or on all of them for label-time rollouts).
    fix_slots = [(qid, c, b) for qid, c, b in branch_slots if b.gate or cfg.fix_all]
    if fix_slots and "fixer" in svc.team.agents:
        prompts = [
            fixer.build(qmap[qid], svc.schema_of(qmap[qid].db_id), c.planner.sql, c.exec, b.critiques)
            for qid, c, b in fix_slots
        ]
        s = stage_seed(cfg.seed, "fixer")
        outs_f = _generate(svc, "fixer", prompts, cfg.fixer_samples, fixer_temperature(cfg, svc.team), s)
        jobs = [
            (qmap[qid], fixer.parse(t))
            for (qid, _, _), texts in zip(fix_slots, outs_f, strict=True)
            for t in texts
        ]
        execs = iter(_run_sqls(svc, jobs, gold))
        for (_, _, b), p, texts in zip(fix_slots, prompts, outs_f, strict=True):
            pd = prompt_digest(p)
            for t in texts:
                info, ok = next(execs)
                b.fixes.append(
                    Fix(text=t, sql=fixer.parse(t), exec=info, correct=ok, seed=s, prompt_digest=pd)
                )
    elif fix_slots:
        for _, _, b in fix_slots:
            b.gate = False  # no fixer configured: nothing can run

    # 5. Final SQL per branch: the fix when gated and it produced SQL, else the planner SQL.
    for _, c, b in branch_slots:
        f = b.fix if b.gate else None
        if f is not None and f.sql:
            b.final_sql, b.final_exec, b.final_correct = f.sql, f.exec, f.correct
        else:
            b.final_sql, b.final_exec, b.final_correct = c.planner.sql, c.exec, c.correct

    records = []
    for q in questions:
        if q.question_id in gold:
            gexec = svc.to_exec_info(gold[q.question_id])
            clist = cands.get(q.question_id, [])
        else:
            gexec = ExecInfo(status="missing_db", error=f"database {q.db_id} not found")
            clist = []
        records.append(
            RolloutRecord(
                question=q, gold_exec=gexec, candidates=clist, config_hash=config_hash, models=models
            )
        )
    return records
