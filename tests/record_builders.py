"""Small builders for hand-written rollout records in tests."""

from __future__ import annotations

from matsql.records import AgentOutput, Branch, Candidate, Critique, ExecInfo, Fix, Question, RolloutRecord


def ok(dg: str) -> ExecInfo:
    return ExecInfo(status="ok", rows_digest=dg, n_rows=1, preview=dg)


def err() -> ExecInfo:
    return ExecInfo(status="error", error="no such column")


def crit(agent: str, verdict: str, text: str | None = None) -> Critique:
    return Critique(
        agent=agent, text=text or f" {agent} says {verdict}\nConclude: {verdict}", verdict=verdict
    )


def cand(
    i: int,
    sql: str,
    info: ExecInfo,
    correct: bool,
    verdicts: tuple[str, str] | None = None,
    fix: tuple[str, ExecInfo, bool] | None = None,
    gate: bool = False,
    greedy: bool = False,
) -> Candidate:
    branches = []
    if verdicts is not None:
        b = Branch(
            critiques={"val-sel": crit("val-sel", verdicts[0]), "val-cond": crit("val-cond", verdicts[1])},
            gate=gate,
        )
        if fix is not None:
            b.fixes.append(
                Fix(text=f"```sql\n{fix[0]}\n```", sql=fix[0], exec=fix[1], correct=fix[2], prompt_digest="p")
            )
        if gate and b.fixes:
            b.final_sql, b.final_exec, b.final_correct = fix[0], fix[1], fix[2]
        else:
            b.final_sql, b.final_exec, b.final_correct = sql, info, correct
        branches.append(b)
    return Candidate(
        index=i,
        planner=AgentOutput(text=sql, sql=sql),
        exec=info,
        correct=correct,
        branches=branches,
        greedy=greedy,
    )


def record(qid: str, cands: list[Candidate], db: str = "db", difficulty: str = "simple") -> RolloutRecord:
    return RolloutRecord(
        question=Question(
            question_id=qid, db_id=db, question="q?", gold_sql="SELECT 1", difficulty=difficulty
        ),
        gold_exec=ok("gold"),
        candidates=cands,
    )
