"""Fakes for pipeline tests: a seeded canned-output backend and sqlite-backed services."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.records import ExecInfo, Question, digest
from matsql.rollout.config import RolloutConfig
from matsql.rollout.pipeline import Services
from matsql.team import parse_team

PLANNER_OUTS = [
    "Final SQL query:\n```sql\nSELECT name FROM singer WHERE age > 30\n```",  # right for q-old
    "Final SQL query:\n```sql\nSELECT name FROM singer\n```",
    "Final SQL query:\n```sql\nSELECT nme FROM singer\n```",  # error
    "no sql here",
]
CRITIQUES = [" ok\nConclude: correct", " wrong filter\nConclude: incorrect", " hmm"]
FIXES = ["\n```sql\nSELECT name FROM singer WHERE age > 30\n```", "\n```sql\nSELECT age FROM singer\n```"]


@dataclass
class CannedBackend:
    """Sampling from canned outputs with a seeded RNG over the whole call, so (like real
    batched sampling) outputs depend on the batch composition, not on the prompt alone."""

    name: str = "canned"

    def __post_init__(self):
        self.stats = GenerationStats()
        self.calls: list[tuple[int, int, float]] = []

    def generate(self, prompts: list[ChatPrompt], n=1, temperature=0.0, max_tokens=256, stop=None, seed=0):
        rng = random.Random(seed)
        out = []
        for p in prompts:
            system = p.messages[0][1]
            kind = "fixer" if "repairs" in system else "validator" if "reviewer" in system else "planner"
            pool = {"fixer": FIXES, "validator": CRITIQUES, "planner": PLANNER_OUTS}[kind]
            self.calls.append((kind, n, temperature))
            if temperature == 0:
                out.append([pool[0]] * n)
            else:
                out.append([rng.choice(pool) for _ in range(n)])
            self.stats.completion_tokens += 5 * n
        return out


def make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE singer(id INTEGER PRIMARY KEY, name TEXT, age INT)")
    con.executemany("INSERT INTO singer VALUES (?,?,?)", [(1, "Ann", 25), (2, "Bob", 41), (3, "Cid", 33)])
    con.commit()
    con.close()
    return path


def questions(n: int = 10) -> list[Question]:
    qs = []
    for i in range(n):
        gold = "SELECT name FROM singer WHERE age > 30" if i % 2 == 0 else "SELECT name FROM singer"
        db = "missing_db" if i == n - 1 else "music"
        qs.append(Question(question_id=f"q{i}", db_id=db, question=f"question {i}", gold_sql=gold))
    return qs


@dataclass
class Res:
    status: str
    rows: list | None
    error: str | None = None


def sqlite_services(db: Path, backend: CannedBackend) -> Services:
    team = parse_team(
        {
            "agents": {
                "planner": {"model": "fake", "temperature": 1.0},
                "val-sel": {"model": "fake", "temperature": 1.0},
                "val-cond": {"model": "fake", "temperature": 1.0},
                "fixer": {"model": "fake", "temperature": 0.0},
            }
        }
    )

    def execute(jobs):
        out = []
        for path, sql in jobs:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                out.append(Res("ok", con.execute(sql).fetchall()))
            except sqlite3.Error as e:
                out.append(Res("error", None, str(e)))
            finally:
                con.close()
        return out

    def to_info(r: Res) -> ExecInfo:
        if r.status != "ok":
            return ExecInfo(status="error", error=r.error)
        return ExecInfo(status="ok", n_rows=len(r.rows), rows_digest=digest(repr(sorted(set(r.rows)))))

    return Services(
        team=team,
        backends=dict.fromkeys(["planner", "val-sel", "val-cond", "fixer"], backend),
        schema_of=lambda db_id: f"# Table: singer ({db_id})",
        db_path_of=lambda db_id: db,
        has_db=lambda db_id: db_id == "music",
        execute=execute,
        ex_match=lambda p, g: set(p) == set(g),
        to_exec_info=to_info,
    )


def label_time_config() -> RolloutConfig:
    """A label-time rollout: every branch fixed, two fixes sampled per branch at T=1.0."""
    return RolloutConfig(
        benchmark="fake",
        k=3,
        branches=4,
        fix_all=True,
        fixer_samples=2,
        fixer_temperature=1.0,
        gate="critique",
    )
