"""SFT data for every agent, from a benchmark's train split and from rollouts.

Pure builders (questions / rollout records + a schema function -> rows) and one writer. A row
is TRL's conversational prompt-completion format (``prompt`` messages, ``completion`` = one
assistant message that starts with the agent's prefix) plus ``prefix`` (so the trainer puts the
forced prefix on the prompt side) and string info columns (question_id, db_id, agent, label,
reason). Prompts are the agents' own builders (:mod:`matsql.agents`), so training and inference
prompts cannot drift apart; the student prompt never contains the gold SQL.

- planner: question -> plan (Goal/Conditions/Tables derived from gold SQL) + gold SQL.
- val-sel / val-cond: teacher critiques (:mod:`matsql.labels.teacher`) of REAL planner samples
  from rollouts, with their execution results; optional correct/incorrect balance. The text is
  rule-based by default; with an LLM teacher the model writes it (verdict still from execution)
  and each row names its teacher in ``TEACHER_COLUMNS``.
- fixer: candidate + critiques -> gold SQL for wrong candidates; a share of correct candidates
  is kept unchanged (so the fixer learns to leave right SQL alone). Critiques are the rollout's
  sampled ones when present (E1: varied, sometimes wrong) or the teacher's.
- selector: distinct-result candidates (failures dropped) -> the number of the correct one,
  options shuffled deterministically per question.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from matsql.agents import planner, selector, validator
from matsql.backends.base import Backend, ChatPrompt
from matsql.draws import sft_rng
from matsql.labels import teacher
from matsql.labels.common import distinct_candidates
from matsql.labels.dataset import write_datasets
from matsql.labels.fixer import fixer_sft
from matsql.labels.prompts import make_prompt_fn
from matsql.labels.sqlparts import parse_parts, tables_and_columns
from matsql.records import Question, RolloutRecord

SchemaFn = Callable[[str], str]
SFT_AGENTS = ("planner", "val-sel", "val-cond", "fixer", "selector")
INFO_COLUMNS = ("question_id", "db_id", "agent", "label", "reason")
# written only by an LLM teacher run, so the rule-based default's datasets stay as they were
TEACHER_COLUMNS = ("teacher", "teacher_template", "teacher_seed")


@dataclass
class Built:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count, reported by the CLI
    teacher: teacher.TeacherReport | None = None  # set when an LLM teacher wrote the critiques


@cache
def _phrases() -> dict[str, Any]:
    path = resources.files("matsql.labels").joinpath("templates", "sft_data.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def row(
    prompt: ChatPrompt, target: str, q: Question, agent: str, label: str = "", reason: str = ""
) -> dict[str, Any]:
    return {
        "prompt": prompt.as_messages(),
        "completion": [{"role": "assistant", "content": prompt.prefix + target}],
        "prefix": prompt.prefix,
        "question_id": q.question_id,
        "db_id": q.db_id,
        "agent": agent,
        "label": label,
        "reason": reason,
    }


# ---------------------------------------------------------------- planner


def _items(texts: Iterable[str]) -> str:
    return ", ".join(f"`{t}`" for t in texts)


def plan_lines(gold_sql: str) -> tuple[str, str, str] | None:
    """(goal, conditions, tables) describing ``gold_sql``; None when sqlglot cannot read it."""
    parts, tables = parse_parts(gold_sql), tables_and_columns(gold_sql)
    if parts is None or tables is None:
        return None
    p = _phrases()["planner"]
    goal = p["goal"].format(
        select=_items(i.text for i in parts.select),
        per_group=p["per_group"].format(group=_items(i.text for i in parts.group_by))
        if parts.group_by
        else "",
        distinct=p["distinct"] if parts.distinct else "",
    )
    conds = []
    for key, items in (("join", parts.joins), ("where", parts.where)):
        if items:
            conds.append(p[key].format(items=" AND ".join(f"`{i.text}`" for i in items)))
    if parts.group_by:
        conds.append(p["group"].format(items=_items(i.text for i in parts.group_by)))
    if parts.having:
        conds.append(p["having"].format(items=" AND ".join(f"`{i.text}`" for i in parts.having)))
    if parts.order_by:
        conds.append(p["order"].format(items=_items(i.text for i in parts.order_by)))
    if parts.limit:
        conds.append(p["limit"].format(limit=parts.limit))
    if parts.set_op:
        conds.append(p["set_op"].format(op=parts.set_op.upper()))
    conditions = p["conditions_join"].join(conds) + "." if conds else p["conditions_none"]
    shown = []
    for table, cols in tables.items():
        if not table:
            shown.append(p["unqualified"].format(columns=", ".join(cols)))
        elif cols:
            shown.append(p["table"].format(table=table, columns=", ".join(cols)))
        else:
            shown.append(p["table_no_columns"].format(table=table))
    return goal, conditions, "; ".join(shown)


def planner_examples(questions: Sequence[Question], schema: SchemaFn) -> Built:
    out = Built()
    for q in questions:
        lines = plan_lines(q.gold_sql)
        if lines is None:
            out.skipped["gold_unparsable"] += 1
            continue
        target = planner.render_target(*lines, sql=q.gold_sql.strip().rstrip(";"))
        out.rows.append(row(planner.build(q, schema(q.db_id)), target, q, "planner", reason="gold"))
    return out


# ---------------------------------------------------------------- validators


def balance(rows: list[dict[str, Any]], correct_ratio: float | None, seed: int) -> list[dict[str, Any]]:
    """Down-sample the majority verdict so that ``correct_ratio`` of rows are "correct"."""
    if correct_ratio is None:
        return rows
    if not 0.0 < correct_ratio < 1.0:
        raise ValueError(f"correct_ratio must be in (0, 1), got {correct_ratio}")
    pos = [r for r in rows if r["label"] == "correct"]
    neg = [r for r in rows if r["label"] != "correct"]
    if not pos or not neg:
        return rows
    if len(pos) / len(rows) > correct_ratio:
        pos = sft_rng(seed, "balance").sample(pos, round(correct_ratio / (1 - correct_ratio) * len(neg)))
    else:
        neg = sft_rng(seed, "balance").sample(neg, round((1 - correct_ratio) / correct_ratio * len(pos)))
    keep = {id(r) for r in pos + neg}
    return [r for r in rows if id(r) in keep]  # original order


def validator_examples(
    records: Sequence[RolloutRecord],
    schema: SchemaFn,
    agent: str,
    *,
    max_per_question: int | None = 4,
    correct_ratio: float | None = None,
    seed: int = 0,
    llm: tuple[Backend, teacher.LLMTeacher] | None = None,
) -> Built:
    """Teacher critiques of distinct planner samples. With ``llm`` (a backend and its teacher
    entry) the model rewrites the text of the rows kept after balancing (labels come from
    execution, so balancing first asks the model only for rows that stay)."""
    if agent not in teacher.AGENTS:
        raise ValueError(f"unknown validator {agent!r}")
    out = Built()
    jobs: dict[int, teacher.TeacherJob] = {}  # id(row) -> what the LLM teacher needs for it
    for rec in records:
        q = rec.question
        cands = distinct_candidates(rec)
        sft_rng(seed, q.question_id, agent).shuffle(cands)
        taken = 0
        for c in cands:
            if max_per_question is not None and taken >= max_per_question:
                out.skipped["over_max_per_question"] += 1
                continue
            tc = teacher.critique(agent, c.planner.sql, c.exec, q.gold_sql, rec.gold_exec)
            if tc is None:
                out.skipped["gold_failed"] += 1
                break
            prompt = validator.build(agent, q, schema(q.db_id), c.planner.sql, c.exec)
            out.rows.append(row(prompt, tc.text, q, agent, label=tc.verdict, reason=tc.reason))
            if llm is not None:
                tp = teacher.teacher_prompt(
                    agent, q, schema(q.db_id), c.planner.sql, c.exec, rec.gold_exec, tc.verdict
                )
                jobs[id(out.rows[-1])] = teacher.TeacherJob(agent, tp, tc)
            taken += 1
    before = len(out.rows)
    out.rows = balance(out.rows, correct_ratio, seed)
    if before > len(out.rows):
        out.skipped["balance"] += before - len(out.rows)
    if llm is not None:
        backend, spec = llm
        written, out.teacher = teacher.write_critiques(backend, spec, [jobs[id(r)] for r in out.rows])
        out.rows = [_with_teacher(r, w) for r, w in zip(out.rows, written, strict=True)]
    return out


def _with_teacher(r: dict[str, Any], w: teacher.Written) -> dict[str, Any]:
    """A rule-based row rewritten with the critique ``w`` and the teacher that wrote it."""
    return {
        **r,
        "completion": [{"role": "assistant", "content": r["prefix"] + w.text}],
        "reason": w.reason,
        "teacher": w.teacher,
        "teacher_template": w.template,
        "teacher_seed": "" if w.seed is None else str(w.seed),
    }


# ---------------------------------------------------------------- fixer


def fixer_examples(
    records: Sequence[RolloutRecord],
    schema: SchemaFn,
    *,
    critiques: Literal["rollout", "teacher"] = "rollout",
    keep_correct: float = 0.2,
    max_per_question: int | None = 4,
    seed: int = 0,
) -> Built:
    """Wrong candidates -> gold SQL; a ``keep_correct`` share of correct ones -> themselves
    (:func:`matsql.labels.fixer.fixer_sft`, the one fixer SFT builder, as rows)."""
    out = Built()
    examples = fixer_sft(
        records,
        make_prompt_fn(schema),
        critiques=critiques,
        keep_correct=keep_correct,
        max_per_question=max_per_question,
        seed=seed,
        skipped=out.skipped,
    )
    for e in examples:
        label = "keep" if e.candidate.correct else "fix"
        verdicts = ",".join(f"{a}={v.verdict}" for a, v in sorted(e.critiques.items()))
        out.rows.append(row(e.prompt, e.target, e.record.question, "fixer", label=label, reason=verdicts))
    return out


# ---------------------------------------------------------------- selector


def selector_examples(
    records: Sequence[RolloutRecord],
    schema: SchemaFn,
    *,
    with_verdicts: bool = False,
    max_options: int | None = None,
    seed: int = 0,
    inject_gold: bool = True,
) -> Built:
    """Questions with >= 2 distinct results of which one is correct -> that option's number.

    With ``inject_gold``, a question whose candidates hold no correct result gets the gold SQL
    as one more option (its result is the gold result): weak planners, early in training,
    rarely produce a correct candidate, and without this the selector would see no data.
    """
    out = Built()
    for rec in records:
        q = rec.question
        # the options ``matsql select`` shows, in candidate order (shuffled below with this seed)
        opts = sorted(
            selector.build_options(rec, with_verdicts=with_verdicts), key=lambda o: o.candidate_index
        )
        if inject_gold and opts and not any(o.correct for o in opts) and rec.gold_exec.status == "ok":
            opts = [*opts, selector.Option(sql=q.gold_sql, exec=rec.gold_exec, correct=True)]
            out.skipped["gold_injected"] += 1
        right = [o for o in opts if o.correct]
        if len(opts) < 2 or len(right) != 1:
            out.skipped["no_choice" if len(opts) < 2 else "no_correct_option"] += 1
            continue
        rng = sft_rng(seed, q.question_id, "selector")
        if max_options is not None and len(opts) > max_options:
            wrong = [o for o in opts if not o.correct]
            opts = right + rng.sample(wrong, max_options - 1)
        rng.shuffle(opts)
        index = next(i for i, o in enumerate(opts) if o.correct)
        prompt = selector.build(q, schema(q.db_id), opts)
        out.rows.append(row(prompt, selector.render_target(index), q, "selector", label=str(index + 1)))
    return out


# ---------------------------------------------------------------- writing


def write_sft(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, name: str, test_ids: set[str] | None = None
) -> dict[str, int]:
    """``out_dir/<name>/`` (a datasets DatasetDict: train and test, test possibly empty) and ``out_dir/<name>.jsonl``
    (every row with its split). Rows of questions in ``test_ids`` go to ``test``."""
    from datasets import Features, Value

    msgs = [{"role": Value("string"), "content": Value("string")}]
    features = Features(
        {
            "prompt": msgs,
            "completion": msgs,
            "prefix": Value("string"),
            **{c: Value("string") for c in INFO_COLUMNS},
            **{c: Value("string") for c in TEACHER_COLUMNS if any(c in r for r in rows)},
        }
    )
    test_ids = test_ids or set()
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for r in rows:
        splits["test" if r["question_id"] in test_ids else "train"].append(r)
    jsonl = ({"split": s, **r} for s, rs in splits.items() for r in rs)  # train rows, then test rows
    return write_datasets(Path(out_dir), name, splits, features, jsonl)
