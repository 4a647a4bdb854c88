"""Build the real :class:`Services` (benchmark, sandboxed executor, backends) for a run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from matsql.rollout.config import RolloutConfig
from matsql.rollout.pipeline import Services
from matsql.team import Team


def make_backends(team: Team, needed: list[str]) -> dict:
    """One backend per needed agent; a backend that can check its server (an HTTP backend's
    model or LoRA adapter is served) does so now, before any work, and refuses clearly."""
    from matsql.backends.registry import make_backend

    backends = {name: make_backend(team[name].backend, agent=name) for name in needed}
    for b in {id(b): b for b in backends.values()}.values():
        check = getattr(b, "check_served", None)
        if check is not None:
            check()
    return backends


@contextmanager
def real_services(
    cfg: RolloutConfig, team: Team, benchmark, backends: dict | None = None, ex_mode: str = "bird"
) -> Iterator[Services]:
    from matsql.sql import Executor, ex_match, to_exec_info

    needed = ["planner", *cfg.validators]
    if "fixer" in team.agents and cfg.gate != "never":
        needed.append("fixer")
    if cfg.planner_from:
        needed.remove("planner")
    if backends is None:
        backends = make_backends(team, needed)
    # keep_rows=False: workers send digests and previews, and compare with gold themselves
    with Executor(timeout_s=cfg.exec_timeout_s, keep_rows=False) as ex:
        yield Services(
            team=team,
            backends=backends,
            schema_of=benchmark.schema_of(cfg.schema_style),
            db_path_of=benchmark.db_path,
            has_db=benchmark.has_db,
            execute=ex.run_many,
            ex_match=lambda p, g: ex_match(p, g, mode=ex_mode),
            # timings vary run to run; records stay reproducible without them
            to_exec_info=lambda r: to_exec_info(r).model_copy(update={"elapsed_s": None}),
            judge=lambda items: [(j.pred, j.gold, j.correct) for j in ex.judge_many(items, ex_mode)],
        )
