"""Whether two run folders of one plan wrote the same rollout records, stage by stage.

For a change that should alter how stages run and not what they write (``experiment run
--warm``): every done stage whose output is a rollout file in both folders is compared record by
record. Left out: SQL execution times (``elapsed_s``) and the config hash, which hashes the run's
paths; in every other string (the agents' adapter paths) each folder's parent reads ``<root>``.
Prints a line per stage that differs, a count, and the compared stages' seconds in each folder
(their manifests); exits 1 if any differs.

    python scripts/same_records.py /tmp/smoke-cold/run /tmp/smoke-warm/run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from matsql.rollout.io import read_records

LEFT_OUT = ("elapsed_s", "config_hash")


def _strip(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, root) for k, v in value.items() if k not in LEFT_OUT}
    if isinstance(value, list):
        return [_strip(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def records(path: Path, run: Path) -> list[Any]:
    root = str(run.resolve().parent)
    return [_strip(r.model_dump(), root) for r in read_records(path)]


def rollout_outputs(run: Path) -> dict[str, tuple[Path, float]]:
    """Done stage -> (its output relative to the run, its seconds), for stages whose output is a
    rollout file."""
    out = {}
    for m in sorted((run / "manifests").glob("*.json")):
        d = json.loads(m.read_text(encoding="utf-8"))
        o = Path(d.get("out", ""))
        if (
            d.get("status") != "done"
            or d["argv"][0] != "rollout"
            or not o.name.endswith((".jsonl", ".jsonl.gz"))
        ):
            continue
        rel = o.relative_to(run.resolve()) if o.is_relative_to(run.resolve()) else o
        out[d["stage"]] = (rel, float(d.get("seconds") or 0.0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="a run folder")
    ap.add_argument("b", type=Path, help="another run folder of the same plan")
    args = ap.parse_args()
    a, b = rollout_outputs(args.a), rollout_outputs(args.b)
    both = sorted(a.keys() & b.keys())
    differ = []
    for stage in both:
        ra, rb = records(args.a / a[stage][0], args.a), records(args.b / b[stage][0], args.b)
        if ra != rb:
            n = sum(x != y for x, y in zip(ra, rb, strict=False)) + abs(len(ra) - len(rb))
            differ.append(stage)
            print(f"{stage}: {n} of {max(len(ra), len(rb))} record(s) differ")
    only = sorted(a.keys() ^ b.keys())
    sa, sb = (sum(x[s][1] for s in both) for x in (a, b))
    print(f"their seconds (manifests): {sa:.1f} in {args.a}, {sb:.1f} in {args.b}")
    print(f"{len(both) - len(differ)} of {len(both)} rollout stage(s) wrote the same records"
          + (f"; done in one folder only: {', '.join(only)}" if only else ""))  # fmt: skip
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
