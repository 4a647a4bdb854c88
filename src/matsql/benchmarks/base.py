"""One loaded benchmark: its questions and where their SQLite databases are.

Questions whose database file is absent are kept, never dropped silently: ``missing`` lists
them and ``select`` applies an explicit policy (DESIGN.md: by default they are scored wrong).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from matsql.benchmarks.schema import DEFAULT_STYLE
from matsql.benchmarks.schema import schema_text as _schema_text
from matsql.records import Question

MissingPolicy = Literal["wrong", "skip", "error"]
MISSING_POLICIES: tuple[str, ...] = ("wrong", "skip", "error")


class MissingDatabaseError(RuntimeError):
    """Questions need database files that are not there (policy ``error``)."""


@dataclass
class Benchmark:
    """Questions plus a database folder laid out as ``<db_dir>/<db_id>/<db_id>.sqlite``.

    ``difficulty_source`` says where ``Question.difficulty`` came from (an official field, the
    official Spider hardness, or an approximation), so reports can label it honestly.
    """

    name: str
    questions: list[Question]
    db_dir: Path
    root: Path | None = None
    difficulty_source: str = ""
    _has: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def db_path(self, db_id: str) -> Path:
        return self.db_dir / db_id / f"{db_id}.sqlite"

    def description_dir(self, db_id: str) -> Path:
        """BIRD-style ``database_description`` folder (may not exist, e.g. for Spider)."""
        return self.db_dir / db_id / "database_description"

    def has_db(self, db_id: str) -> bool:
        if db_id not in self._has:
            self._has[db_id] = self.db_path(db_id).is_file()
        return self._has[db_id]

    @property
    def runnable(self) -> list[Question]:
        return [q for q in self.questions if self.has_db(q.db_id)]

    @property
    def missing(self) -> list[Question]:
        """Questions whose database file is absent."""
        return [q for q in self.questions if not self.has_db(q.db_id)]

    @property
    def db_ids(self) -> list[str]:
        """Distinct database ids, in first-appearance order."""
        return list(dict.fromkeys(q.db_id for q in self.questions))

    @property
    def missing_dbs(self) -> dict[str, int]:
        """Absent database id -> number of questions that need it."""
        return dict(Counter(q.db_id for q in self.missing))

    def schema_text(self, db_id: str, style: str = DEFAULT_STYLE) -> str:
        """Prompt schema of one database in a layout of ``schema_format.yaml`` (cached per file;
        deterministic). The style shapes prompts, so callers pass the one their run records."""
        if not self.has_db(db_id):
            raise MissingDatabaseError(f"{self.name}: database {db_id!r} not found at {self.db_path(db_id)}")
        return _schema_text(self.db_path(db_id), self.description_dir(db_id), style=style)

    def schema_of(self, style: str) -> Callable[[str], str]:
        """``db_id -> schema text`` in one style: the lookup prompt builders take."""
        return lambda db_id: self.schema_text(db_id, style)

    def select(self, missing: MissingPolicy = "wrong") -> list[Question]:
        """Questions to run under a missing-database policy.

        ``wrong``: all questions (callers score missing ones wrong); ``skip``: runnable only;
        ``error``: raise if any question needs an absent database.
        """
        if missing == "wrong":
            return list(self.questions)
        if missing == "skip":
            return self.runnable
        if missing == "error":
            absent = self.missing
            if absent:
                ids = ", ".join(q.question_id for q in absent[:5])
                dbs = ", ".join(f"{db} ({n} questions)" for db, n in self.missing_dbs.items())
                raise MissingDatabaseError(
                    f"{self.name}: {len(absent)} of {len(self.questions)} questions need a missing "
                    f"database under {self.db_dir}: {dbs}; first question ids: {ids}"
                    f"{', ...' if len(absent) > 5 else ''}. Use missing='wrong' to score them wrong "
                    "or 'skip' to leave them out."
                )
            return list(self.questions)
        raise ValueError(f"missing policy must be one of {MISSING_POLICIES}, got {missing!r}")
