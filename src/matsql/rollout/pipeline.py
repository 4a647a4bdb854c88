"""The pipeline over K candidates for a batch of questions.

planner (K samples) -> execute -> validators (``branches`` critiques per candidate and validator)
-> gate -> fixer -> final candidates. One code path serves inference (branches=1, gated fixer)
and label-time rollouts (branches=M, ``fix_all``: the fixer runs on every branch so that every
label mode can be computed from the record without re-running a model).

Faults stay with their question: a generate call that fails is retried prompt by prompt, and a
question whose prompt still fails (a request the server rejects, e.g. HTTP 400 for a context
that is too long; a prompt that keeps timing out while others succeed) becomes an *error
record* with the reason, so the run goes on. When every prompt fails for a reason that is not
the request's own (the server is down), the call raises: the run stops and resumes later.
A question whose database is corrupt is an error record too. Text from a model is sanitised
(lone surrogates, NUL) before it goes into a record or the next prompt.

Reproducibility: each generate call gets a seed derived from (run seed, stage) alone. The
backends key each sample's random stream on (seed, prompt, sample index), so a question's
outputs do not depend on which batch or shard it ran in; batches are also fixed by question
order, so even a backend whose sampling depends on the batch recomputes a partially written
batch exactly on resume.
"""

from __future__ import annotations

import hashlib
import re
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
    record_prompt_digest,
)
from matsql.rollout.config import RolloutConfig
from matsql.rollout.gating import should_fix
from matsql.team import Team


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage's generate call: independent of the batch (see module docstring)."""
    h = hashlib.sha256(f"{seed}||{stage}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


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
    # (db_path, pred sql, gold sql) -> (pred result, gold result, correct), compared where the
    # rows are (the Executor's workers); when unset, execute + ex_match on rows
    judge: Callable[[list[tuple[Any, str, str]]], list[tuple[Any, Any, bool]]] | None = None


_UNSAFE_TEXT = re.compile("[\ud800-\udfff\x00]")


def sanitize_text(text: str) -> str:
    """Model text made safe to store and to send again: lone surrogates (which no UTF-8 encoder
    takes) and NUL become U+FFFD."""
    return _UNSAFE_TEXT.sub("\ufffd", text) if _UNSAFE_TEXT.search(text) else text


class _Failures(dict[str, str]):
    """question id -> why it failed for good (first reason kept)."""

    def add(self, qid: str, reason: str) -> None:
        self.setdefault(qid, reason)


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
    outs = svc.backends[agent].generate(
        prompts, n=n, temperature=temperature, max_tokens=spec.max_tokens, stop=spec.stop or None, seed=seed
    )
    return [[sanitize_text(t) for t in texts] for texts in outs]


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 500 else text[:499] + "…"


def _generate_guarded(
    svc: Services,
    agent: str,
    prompts: list[ChatPrompt],
    owners: list[str],
    n: int,
    temperature: float,
    seed: int,
    failed: _Failures,
) -> list[list[str] | None]:
    """``_generate``, with a failed call retried prompt by prompt; a prompt that fails alone
    makes its question (``owners[i]``) an error record and gets None. Raises when every prompt
    fails and no failure is the request's own fault (``permanent``): the backend is down."""
    try:
        return list(_generate(svc, agent, prompts, n, temperature, seed))
    except Exception as first:
        batch_error: Exception = first
    out: list[list[str] | None] = []
    errors: list[tuple[int, Exception]] = []
    for i, p in enumerate(prompts):
        try:
            out.append(_generate(svc, agent, [p], n, temperature, seed)[0])
        except Exception as e:
            out.append(None)
            errors.append((i, e))
    if errors and len(errors) == len(prompts) and not all(getattr(e, "permanent", False) for _, e in errors):
        raise errors[0][1] from batch_error
    for i, e in errors:
        failed.add(owners[i], f"{agent}: {_reason(e)}")
    return out


def _no_sql_exec() -> ExecInfo:
    return ExecInfo(status="no_sql", error="no SQL found in the output")


def _run_sqls(
    svc: Services, jobs: list[tuple[Question, str | None]], gold: dict[str, Any]
) -> list[tuple[ExecInfo, bool]]:
    """Execute (question, sql) jobs; return (ExecInfo, correct) per job."""
    with_sql = [(q, sql) for q, sql in jobs if sql]
    if svc.judge is not None:
        judged = iter(svc.judge([(svc.db_path_of(q.db_id), sql, q.gold_sql) for q, sql in with_sql]))
        verdicts = iter(
            (svc.to_exec_info(p), bool(ok) and getattr(g, "status", None) == "ok") for p, g, ok in judged
        )
    else:
        results = iter(
            svc.execute([(svc.db_path_of(q.db_id), sql) for q, sql in with_sql]) if with_sql else ()
        )

        def verdict_of(q: Question, res: Any) -> tuple[ExecInfo, bool]:
            info = svc.to_exec_info(res)
            g = gold.get(q.question_id)
            ok = info.status == "ok" and g is not None and g.status == "ok" and svc.ex_match(res.rows, g.rows)
            return info, bool(ok)

        verdicts = (verdict_of(q, next(results)) for q, _ in with_sql)
    out: list[tuple[ExecInfo, bool]] = []
    for _q, sql in jobs:
        out.append(next(verdicts) if sql else (_no_sql_exec(), False))
    return out


def run_batch(
    questions: Sequence[Question],
    cfg: RolloutConfig,
    svc: Services,
    reuse_planner: dict[str, list[Candidate]] | None = None,
    config_hash: str = "",
) -> list[RolloutRecord]:
    models = {name: spec.model_id() for name, spec in svc.team.agents.items()}
    failed = _Failures()

    # Gold results (once per question). Missing DBs give a record with no candidates: scored wrong.
    runnable = [q for q in questions if svc.has_db(q.db_id)]
    gold_results = svc.execute([(svc.db_path_of(q.db_id), q.gold_sql) for q in runnable]) if runnable else []
    gold = {q.question_id: r for q, r in zip(runnable, gold_results, strict=True)}
    schemas: dict[str, str] = {}
    for q in runnable:
        r = gold[q.question_id]
        if getattr(r, "bad_db", False):
            failed.add(q.question_id, f"database: {r.error}")
            continue
        if q.db_id not in schemas:
            try:
                schemas[q.db_id] = svc.schema_of(q.db_id)
            except Exception as e:  # e.g. a corrupt file that the schema reader cannot open
                schemas[q.db_id] = ""
                failed.add(q.question_id, f"database {svc.db_path_of(q.db_id)}: {_reason(e)}")
        elif not schemas[q.db_id]:
            failed.add(q.question_id, f"database {svc.db_path_of(q.db_id)}: schema unreadable")
    live = [q for q in runnable if q.question_id not in failed]

    # 1. Planner candidates.
    cands: dict[str, list[Candidate]] = {}
    if reuse_planner is not None:
        for q in live:
            if q.question_id not in reuse_planner:
                raise KeyError(f"--planner-from has no record for question {q.question_id}")
            cands[q.question_id] = [
                c.model_copy(update={"branches": []}, deep=True) for c in reuse_planner[q.question_id]
            ]
    elif live:
        prompts = [planner.build(q, schemas[q.db_id]) for q in live]
        owners = [q.question_id for q in live]
        outs: list[list[tuple[str, int, bool]]] = [[] for _ in live]
        n_sampled = cfg.k
        if cfg.greedy_candidate:
            s = stage_seed(cfg.seed, "planner-greedy")
            for i, texts in enumerate(_generate_guarded(svc, "planner", prompts, owners, 1, 0.0, s, failed)):
                if texts is not None:
                    outs[i].append((texts[0], s, True))
            n_sampled -= 1
        if n_sampled > 0:
            s = stage_seed(cfg.seed, "planner-sample")
            got = _generate_guarded(svc, "planner", prompts, owners, n_sampled, cfg.temperature, s, failed)
            for i, texts in enumerate(got):
                if texts is not None:
                    outs[i].extend((t, s, False) for t in texts)
        keep = [i for i, q in enumerate(live) if q.question_id not in failed]
        jobs = [(live[i], planner.parse(t)) for i in keep for t, _, _ in outs[i]]
        execs = iter(_run_sqls(svc, jobs, gold))
        for i in keep:
            q, p, o = live[i], prompts[i], outs[i]
            pd = record_prompt_digest(p)
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
    qmap = {q.question_id: q for q in live}
    critiques: dict[tuple[str, int], dict[str, list[Critique]]] = {}
    for v in cfg.validators:
        spec = svc.team[v]
        targets = [(qid, c) for qid, lst in cands.items() if qid not in failed for c in lst if c.planner.sql]
        prompts = [
            validator.build(v, qmap[qid], schemas[qmap[qid].db_id], c.planner.sql, c.exec)
            for qid, c in targets
        ]
        s = stage_seed(cfg.seed, v)
        outs_v = _generate_guarded(
            svc, v, prompts, [qid for qid, _ in targets], cfg.branches, spec.temperature, s, failed
        )
        for (qid, c), p, texts in zip(targets, prompts, outs_v, strict=True):
            if texts is None:
                continue
            pd = record_prompt_digest(p)
            critiques.setdefault((qid, c.index), {})[v] = [
                Critique(agent=v, text=t, verdict=validator.parse(t), seed=s, prompt_digest=pd) for t in texts
            ]

    # 3. Branches + gate.
    branch_slots: list[tuple[str, Candidate, Branch]] = []
    for qid, lst in cands.items():
        if qid in failed:
            continue
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
            fixer.build(qmap[qid], schemas[qmap[qid].db_id], c.planner.sql, c.exec, b.critiques)
            for qid, c, b in fix_slots
        ]
        s = stage_seed(cfg.seed, "fixer")
        outs_f = _generate_guarded(
            svc,
            "fixer",
            prompts,
            [qid for qid, _, _ in fix_slots],
            cfg.fixer_samples,
            fixer_temperature(cfg, svc.team),
            s,
            failed,
        )
        done = [
            (slot, p, texts)
            for slot, p, texts in zip(fix_slots, prompts, outs_f, strict=True)
            if texts is not None and slot[0] not in failed
        ]
        jobs = [(qmap[qid], fixer.parse(t)) for (qid, _, _), _, texts in done for t in texts]
        execs = iter(_run_sqls(svc, jobs, gold))
        for (_, _, b), p, texts in done:
            pd = record_prompt_digest(p)
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
        error = failed.get(q.question_id)
        if q.question_id in gold:
            gexec = svc.to_exec_info(gold[q.question_id])
            clist = [] if error is not None else cands.get(q.question_id, [])
        else:
            gexec = ExecInfo(status="missing_db", error=f"database {q.db_id} not found")
            clist = []
        records.append(
            RolloutRecord(
                question=q,
                gold_exec=gexec,
                candidates=clist,
                config_hash=config_hash,
                models=models,
                error=error,
            )
        )
    return records
