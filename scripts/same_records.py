"""Whether two run folders of one plan wrote the same rollout records, stage by stage.

For a change that should alter how stages run and not what they write (``experiment run
--warm``): every done stage whose output is a rollout file in both folders is compared record by
record, SQL execution times (``elapsed_s``) left out. Prints a line per stage that differs and a
count; exits 1 if any differs.

    python scripts/same_records.py /tmp/smoke-cold/run /tmp/smoke-warm/run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from matsql.rollout.io import read_records


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "elapsed_s"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def records(path: Path) -> list[Any]:
    return [_strip(r.model_dump()) for r in read_records(path)]


def rollout_outputs(run: Path) -> dict[str, Path]:
    """Done stage -> its output, for stages whose output is a rollout file (relative to the run)."""
    out = {}
    for m in sorted((run / "manifests").glob("*.json")):
        d = json.loads(m.read_text(encoding="utf-8"))
        o = Path(d.get("out", ""))
        if (
            d.get("status") == "done"
            and o.name.endswith((".jsonl", ".jsonl.gz"))
            and d["argv"][0] == "rollout"
        ):
            out[d["stage"]] = o.relative_to(run.resolve()) if o.is_relative_to(run.resolve()) else o
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
        ra, rb = records(args.a / a[stage]), records(args.b / b[stage])
        if ra != rb:
            n = sum(x != y for x, y in zip(ra, rb, strict=False)) + abs(len(ra) - len(rb))
            differ.append(stage)
            print(f"{stage}: {n} of {max(len(ra), len(rb))} record(s) differ")
    only = sorted(a.keys() ^ b.keys())
    print(f"{len(both) - len(differ)} of {len(both)} rollout stage(s) wrote the same records"
          + (f"; done in one folder only: {', '.join(only)}" if only else ""))  # fmt: skip
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
