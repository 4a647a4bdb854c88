"""Run a plan: stages in dependency order, finished ones skipped, manifests written."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from matsql.experiment.executors import Executor, StageDeferred, StageFailed
from matsql.experiment.manifest import (
    code_identity,
    collect_metrics,
    git_commit,
    hash_parts,
    is_training,
    now,
    plan_roots,
    read_manifest,
    stage_hash,
    stale_reasons,
    write_manifest,
)
from matsql.experiment.plan import Plan, PlanError

console = Console(stderr=True)


@dataclass(frozen=True)
class Deadlines:
    """When the machine's time runs out (a lent GPU's lease): no stage starts after ``start_by``
    and no training stage (``train sft|orpo``) after ``train_by`` (unix seconds). Why: a stage
    cut off by the lease's end is lost, and a training run also needs its pick to run where its
    checkpoints are (they do not travel). A stage past its deadline is left for the next run."""

    start_by: float | None = None
    train_by: float | None = None

    def passed(self, argv: list[str]) -> str | None:
        t = time.time()
        if self.start_by is not None and t > self.start_by:
            return "the run's deadline for starting stages has passed"
        if self.train_by is not None and t > self.train_by and is_training(argv):
            return "the run's deadline for starting training stages has passed"
        return None


def _exists(out: str) -> bool:
    return Path(out).exists()


def plan_hashes(plan: Plan) -> tuple[dict[str, str], dict[str, dict]]:
    """Each stage's hash and the parts it covers (command, input stages, named files, code),
    with paths relative to the plan's run and base folders (the same on every machine)."""
    code = code_identity()
    outs = [s.out for s in plan.stages.values()]
    roots = plan_roots(plan.run_dir, plan.base_dir)  # paths count relative to these: portable hashes
    hashes: dict[str, str] = {}
    parts: dict[str, dict] = {}
    for name, s in plan.stages.items():  # topological order: inputs first
        parts[name] = hash_parts(s, {d: hashes[d] for d in s.needs}, outs, code, roots)
        hashes[name] = stage_hash(s, {}, parts=parts[name])
    return hashes, parts


def stage_report(plan: Plan) -> dict[str, tuple[str, list[str]]]:
    """(done | stale | pending | running | failed, why) for every stage; ``why`` lists what
    changed since a stale stage ran (a file it names, its command, an input stage, matsql)."""
    hashes, parts = plan_hashes(plan)
    report: dict[str, tuple[str, list[str]]] = {}
    for name, s in plan.stages.items():
        m = read_manifest(plan.run_dir, name)
        if m and m.get("status") == "done" and m.get("hash") == hashes[name] and _exists(s.out):
            report[name] = ("done", [])
        elif m and m.get("status") == "done":
            why = [] if _exists(s.out) else [f"its output {s.out} is missing"]
            if m.get("hash") != hashes[name]:
                why += stale_reasons(m, parts[name])
            report[name] = ("stale", why)
        elif m and m.get("status") in ("running", "failed"):
            report[name] = ("pending", [f"last run {m['status']} ({m.get('finished') or m.get('started')})"])
        else:
            report[name] = ("pending", [])
    return report


def stage_status(plan: Plan) -> dict[str, str]:
    """done | stale (a named file, the command, an input or matsql changed) | pending."""
    return {n: st for n, (st, _) in stage_report(plan).items()}


def run_plan(
    plan: Plan,
    executor: Executor,
    until: str | None = None,
    only: str | None = None,
    force: bool = False,
    jobs: int = 1,
    keep_going: bool = False,
    prefer: list[str] | None = None,
    deadlines: Deadlines | None = None,
) -> dict[str, str]:
    """Run what is needed; return what happened to each stage (ran / skipped / deferred /
    blocked).

    ``jobs > 1`` runs stages whose inputs are done concurrently (e.g. the five SFT stages, one
    per GPU: the local executor hands each running stage its own GPUs). A failure lets running
    stages finish, starts nothing new, and is raised; with ``keep_going`` only the stages that
    need the failed one are dropped, the rest of the graph runs on (``make -k``), and the first
    failure is raised at the end. ``until`` may name several stages, comma-separated.

    When more stages are ready than can run, they start in ``plan.priority_order(prefer)``:
    what ``prefer`` needs first, then the critical path; the executor hands out GPU slots in the
    same order (a lent GPU's minutes go to the study's comparison before side evaluations).

    ``deadlines``: a stage whose deadline has passed when it would start (after waiting for its
    slots) is ``deferred``, what needs it ``blocked``; the run goes on with the rest and ends
    without error, so the next run starts them.
    """
    if until and only:
        raise PlanError("--until and --only exclude each other")
    names = list(plan.stages)
    if until:
        wanted: set[str] = set()
        for target in until.split(","):
            wanted.update(plan.ancestors(target.strip()))
        names = [n for n in plan.stages if n in wanted]
    if only:
        if only not in plan.stages:
            raise PlanError(f"no stage {only!r}; stages: {', '.join(plan.stages)}")
        names = [only]
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    hashes, parts = plan_hashes(plan)  # over the whole graph, in order
    commit = git_commit()
    rank = {n: i for i, n in enumerate(plan.priority_order(prefer))}
    if hasattr(executor, "set_priorities"):
        executor.set_priorities(rank)
    forced = {n for n in [only, *(until or "").split(",")] if force and n}
    due = deadlines or Deadlines()
    try:
        return _run_stages(plan, names, hashes, parts, executor, commit, forced, due, rank, jobs, keep_going)
    finally:
        if hasattr(executor, "close"):  # warm workers (LocalExecutor(warm=True)) end with the plan
            executor.close()


def _run_stages(
    plan: Plan,
    names: list[str],
    hashes: dict[str, str],
    parts: dict[str, dict],
    executor: Executor,
    commit,
    forced: set[str],
    due: Deadlines,
    rank: dict[str, int],
    jobs: int,
    keep_going: bool,
) -> dict[str, str]:

    def run_one(n: str) -> str:
        return _run_stage(plan, n, hashes, parts, executor, commit, n in forced, due)

    def drop_needing(n: str, pending: list[str], outcome: dict[str, str]) -> set[str]:
        lost = {n}
        for m in [x for x in plan.stages if x in pending]:  # plan order: needs first
            if lost & set(plan.stages[m].needs):
                lost.add(m)
                pending.remove(m)
                outcome[m] = "blocked"
        return lost - {n}

    if jobs <= 1 and not keep_going:
        outcome: dict[str, str] = {}
        todo = list(names)
        while todo:
            n = todo.pop(0)
            outcome[n] = run_one(n)
            if outcome[n] == "deferred":
                drop_needing(n, todo, outcome)
        return outcome

    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    outcome = {}
    pending = sorted(names, key=rank.__getitem__)
    running: dict = {}
    failure: BaseException | None = None
    first_error: Exception | None = None
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        while pending or running:
            if failure is None:
                for n in list(pending):
                    if len(running) >= jobs:
                        break
                    blocked = [d for d in plan.stages[n].needs if d in pending or d in running.values()]
                    if not blocked:
                        pending.remove(n)
                        running[pool.submit(run_one, n)] = n
            elif not running:
                break
            if not running:
                raise PlanError(f"stages {pending} cannot start: their inputs are not part of this run")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                n = running.pop(fut)
                try:
                    outcome[n] = fut.result()
                    if outcome[n] == "deferred":
                        blocked = drop_needing(n, pending, outcome)
                        if blocked:
                            console.print(
                                f"[yellow]{n} deferred; so are what needs it: {sorted(blocked)}[/yellow]"
                            )
                except BaseException as e:  # keep the first failure; let running stages finish
                    if not keep_going or not isinstance(e, Exception):
                        failure = failure or e
                        continue
                    first_error = first_error or e
                    outcome[n] = "failed"
                    lost = drop_needing(n, pending, outcome)
                    console.print(
                        f"[red]{n} failed ({e}); dropped what needs it: {sorted(lost) or 'none'}[/red]"
                    )
    if failure is not None:
        raise failure
    if first_error is not None:
        raise first_error
    return outcome


def _run_stage(
    plan: Plan,
    name: str,
    hashes: dict[str, str],
    parts: dict[str, dict],
    executor: Executor,
    commit,
    forced: bool,
    deadlines: Deadlines | None = None,
) -> str:
    s = plan.stages[name]
    m = read_manifest(plan.run_dir, name)
    done = m and m.get("status") == "done" and m.get("hash") == hashes[name] and _exists(s.out)
    if done and not forced:
        console.print(f"[dim]= {name}: done ({m.get('finished')})[/dim]")
        return "skipped"
    due = deadlines or Deadlines()
    if why := due.passed(s.argv):
        console.print(f"[yellow]{name}: not started: {why}[/yellow]")
        return "deferred"
    for d in s.needs:
        dm = read_manifest(plan.run_dir, d)
        if not (dm and dm.get("status") == "done" and dm.get("hash") == hashes[d]):
            raise PlanError(f"stage {name} needs {d}, which is not done; run without --only first")
    if m and m.get("status") == "done" and m.get("hash") != hashes[name] and _exists(s.out):
        # inputs or command changed: the old output is stale, move it aside rather than mix
        stale = Path(s.out + f".stale-{int(time.time())}")
        shutil.move(s.out, stale)
        why = "; ".join(stale_reasons(m, parts[name]))
        console.print(f"[yellow]{name}: stale ({why}); previous output moved to {stale}[/yellow]")
    console.print(f"[bold cyan]> {name}[/bold cyan]: {s.command}")
    record = {
        "stage": name,
        "hash": hashes[name],
        "command": s.command,
        "argv": s.argv,
        "needs": {d: hashes[d] for d in s.needs},
        "parts": parts[name],
        "out": s.out,
        "arm": s.arm,
        "commit": commit,
        "queued": now(),
        "started": now(),
        "status": "running",
    }
    write_manifest(plan.run_dir, s, record)
    t0 = queued = time.perf_counter()

    def on_start() -> None:
        # the executor has the stage's GPU slots now: its seconds count from here, the wait for
        # slots apart (stages sharing a card queue for it; their times would include the queue);
        # unless the deadline passed while it waited
        if why := due.passed(s.argv):
            raise StageDeferred(why)
        nonlocal t0
        t0 = time.perf_counter()
        record.update(started=now(), waited_s=round(t0 - queued, 2))
        write_manifest(plan.run_dir, s, record)

    try:
        executor.run(s, plan.run_dir / "logs" / f"{name}.log", on_start=on_start)
    except StageDeferred as e:
        write_manifest(plan.run_dir, s, record | {"status": "deferred", "finished": now()})
        console.print(f"[yellow]{name}: not started: {e}[/yellow]")
        return "deferred"
    except StageFailed:
        write_manifest(plan.run_dir, s, record | {"status": "failed", "finished": now()})
        raise
    if not _exists(s.out):
        write_manifest(plan.run_dir, s, record | {"status": "failed", "finished": now()})
        raise StageFailed(f"stage {name} finished but wrote no {s.out}")
    record |= {
        "status": "done",
        "finished": now(),
        "seconds": round(time.perf_counter() - t0, 2),
        "metrics": collect_metrics(Path(s.out)),
    }
    write_manifest(plan.run_dir, s, record)
    return "ran"
