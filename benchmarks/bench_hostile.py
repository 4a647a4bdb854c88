"""Hostile SQL against the sandboxed executor: time over the deadline, peak memory, file integrity.

Runs every case of ``tests/hostile_corpus.py`` (>= 100: writes in CTEs, REPLACE/RETURNING,
ATTACH spellings, PRAGMA variants, VACUUM, load_extension, memory and CPU bombs, slow built-ins
such as ``printf('%.*c', 2147483647, 'x')``, long LIKE/GLOB patterns, trim/replace/instr bombs)
one query at a time through :class:`matsql.sql.Executor` at its default caps, and prints:

- per kind: how many ended ok / error / timeout, and the largest wall time;
- the maximum wall time over the deadline (goal: < 1 s), with workers started beforehand
  (the start-up of the pool is printed apart);
- the peak resident memory of the whole run: the sum over this process and all its children,
  sampled every 10 ms (plus the kernel's per-process maxima as a cross-check);
- whether every database file stayed byte-identical and no file appeared (journal, WAL, ATTACH
  or VACUUM INTO targets);
- Spider-mode EX on a right answer with N equal columns (the issue's 76 s case), matsql's
  matcher against the official permutation loop (stopped after ``--official-cap-s``).

    python benchmarks/bench_hostile.py [--timeout 1] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hostile_corpus

from matsql.sql import Executor
from matsql.sql.compare import spider_result_eq
from tests.hostile_corpus import CASES, SETUP

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(d)] = int(stat[stat.rfind(b")") + 2 :].split()[1])
    family, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in family]
        family.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in family:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, every_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.every_s, self.peak, self.stop_flag = every_s, 0, threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_flag.is_set():
            self.peak = max(self.peak, tree_rss(me))
            time.sleep(self.every_s)


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def official_loop(gold: list[tuple], pred: list[tuple], cap_s: float) -> tuple[bool | None, float]:
    """test-suite-sql-eval's permutation loop (all rows as constraints), stopped after cap_s."""
    start = time.perf_counter()
    n = len(gold[0])
    col_sets = [{row[i] for row in gold} for i in range(n)]
    allowed = [[j for j in range(n) if all(row[j] in col_sets[i] for row in pred)] for i in range(n)]
    for k, perm in enumerate(itertools.product(*allowed)):
        if k % 4096 == 0 and time.perf_counter() - start > cap_s:
            return None, time.perf_counter() - start
        if len(set(perm)) != n:
            continue
        p = [tuple(r[i] for i in perm) for r in pred]
        if Counter(p) == Counter(gold):
            return True, time.perf_counter() - start
    return False, time.perf_counter() - start


def spider_section(cap_s: float) -> list[dict]:
    out = []
    for n_cols in (6, 8, 10, 12):
        rows = [tuple([i % 50] * n_cols) for i in range(1000)]
        pred = list(reversed(rows))
        t = time.perf_counter()
        ok = spider_result_eq(rows, pred, order_matters=False)
        ours = time.perf_counter() - t
        official, official_s = official_loop(rows, pred, cap_s) if n_cols <= 10 else (None, None)
        out.append(
            {
                "columns": n_cols,
                "matsql_s": ours,
                "matsql": ok,
                "official_s": official_s,
                "official": official,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=1.0, help="per-query deadline (s)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--official-cap-s", type=float, default=20.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    sampler = Sampler()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="matsql-hostile-") as tmp:
        folder = Path(tmp) / "dbs"
        folder.mkdir()
        db = folder / "db.sqlite"
        con = sqlite3.connect(db)
        con.executescript(SETUP)
        con.commit()
        con.close()
        before = tree_digest(folder)

        rows = []
        t0 = time.perf_counter()
        with Executor(workers=a.workers, timeout_s=a.timeout, cache=False) as ex:
            ex.run_many([(db, "SELECT 1")] * a.workers)  # start the workers
            startup_s = time.perf_counter() - t0
            for kind, sql in CASES:
                sql = sql.replace("{tmp}", str(folder))
                t = time.perf_counter()
                res = ex.run(db, sql)
                wall = time.perf_counter() - t
                rows.append(
                    {"kind": kind, "status": res.status, "wall_s": wall, "error": (res.error or "")[:80]}
                )
            stats = ex.stats
        total_s = time.perf_counter() - t0
        sequential_peak = sampler.peak
        # the bombs again, all at once (every worker busy): what the memory budget is for
        bombs = [
            (db, sql.replace("{tmp}", str(folder)))
            for k, sql in CASES
            if k in ("memory", "cpu", "slow_builtin")
        ]
        sampler.peak = 0
        with Executor(workers=a.workers, timeout_s=a.timeout, cache=False) as ex:
            t = time.perf_counter()
            together = ex.run_many(bombs)
            conc = {
                "queries": len(bombs),
                "wall_s": time.perf_counter() - t,
                "peak_rss_mib": sampler.peak / 2**20,
                "statuses": dict(Counter(r.status for r in together)),
                "memory_kills": ex.stats.memory_kills,
                "deadline_kills": ex.stats.deadline_kills,
            }
        after = tree_digest(folder)
    sampler.stop_flag.set()
    sampler.join()
    spider = spider_section(a.official_cap_s)

    worst = max(rows, key=lambda r: r["wall_s"])
    report = {
        "cases": len(rows),
        "timeout_s": a.timeout,
        "workers": a.workers,
        "startup_s": startup_s,
        "total_s": total_s,
        "max_wall_s": worst["wall_s"],
        "max_over_deadline_s": max(0.0, worst["wall_s"] - a.timeout),
        "peak_rss_whole_run_mib": sequential_peak / 2**20,
        "concurrent_bombs": conc,
        "max_rss_parent_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "max_rss_one_child_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "files_identical": before == after,
        "new_or_changed_files": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)),
        "statuses": dict(Counter(r["status"] for r in rows)),
        "by_kind": {},
        "executor": vars(stats),
        "spider_equal_columns": spider,
    }
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rs = [r for r in rows if r["kind"] == kind]
        report["by_kind"][kind] = {
            "n": len(rs),
            "ok": sum(r["status"] == "ok" for r in rs),
            "error": sum(r["status"] == "error" for r in rs),
            "timeout": sum(r["status"] == "timeout" for r in rs),
            "max_wall_s": max(r["wall_s"] for r in rs),
        }
    report["slowest"] = sorted(rows, key=lambda r: -r["wall_s"])[:5]
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"hostile SQL: {len(rows)} queries, deadline {a.timeout:g} s, {a.workers} workers, default caps")
    print(f"{'kind':<13}{'n':>4}{'ok':>5}{'error':>7}{'timeout':>9}{'max wall s':>12}")
    for kind, k in report["by_kind"].items():
        print(f"{kind:<13}{k['n']:>4}{k['ok']:>5}{k['error']:>7}{k['timeout']:>9}{k['max_wall_s']:>12.2f}")
    print(
        f"max wall time: {worst['wall_s']:.2f} s ({worst['kind']}): {report['max_over_deadline_s']:.2f} s over the deadline"
    )
    print(f"worker start-up before the first query: {startup_s:.2f} s; whole run {total_s:.1f} s")
    print(
        f"peak RSS of the whole run (this process + workers, sampled every 10 ms): "
        f"{report['peak_rss_whole_run_mib']:.0f} MiB; largest single process: parent "
        f"{report['max_rss_parent_mib']:.0f} MiB, one worker {report['max_rss_one_child_mib']:.0f} MiB"
    )
    print(
        f"the {conc['queries']} memory/CPU/slow bombs at once on {a.workers} workers: {conc['wall_s']:.1f} s, "
        f"peak RSS of the whole run {conc['peak_rss_mib']:.0f} MiB, {conc['statuses']}, "
        f"{conc['memory_kills']} killed for memory, {conc['deadline_kills']} at the deadline"
    )
    print(f"database files byte-identical, no new file: {report['files_identical']}")
    s = stats
    print(
        f"executor: {s.executed} executed, {s.deadline_kills} workers killed at the deadline, "
        f"{s.memory_kills} killed for memory, {s.worker_crashes} crashed, {s.workers_started} started"
    )
    print("slowest:")
    for r in report["slowest"]:
        print(f"  {r['wall_s']:.2f} s  {r['kind']:<12} {r['status']:<8} {r['error']}")
    print("Spider EX, a right answer with N equal columns (1000 rows, rows reversed):")
    for sp in spider:
        off = (
            "not run"
            if sp["official_s"] is None
            else (
                f"{sp['official_s']:.2f} s"
                + (
                    ""
                    if sp["official"] is not None
                    else f" (stopped at the {a.official_cap_s:g} s cap, no verdict)"
                )
            )
        )
        print(
            f"  {sp['columns']:>2} columns: matsql {sp['matsql_s'] * 1000:.1f} ms ({sp['matsql']}); official loop {off}"
        )


if __name__ == "__main__":
    main()
