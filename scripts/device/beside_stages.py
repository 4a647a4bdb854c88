"""May these stages run beside the ORPO learning-rate check (scripts/device/orpo_lr_check.sh)?

The check reruns ORPO at a new learning rate and, if its rule adopts it, every ORPO run of the plan
changes. A stage that runs beside it must therefore need no ORPO run, directly or through its
inputs (`experiment run --until` runs what a stage needs too). Prints the stages and exits 0 if
none does; exits 1 naming the first stage that does and the ORPO run it reaches.

    python3 scripts/device/beside_stages.py PLAN STAGE[,STAGE...]
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    from matsql.experiment.plan import PlanError, load_plan

    plan = load_plan(argv[0])
    names = [s for s in argv[1].split(",") if s]
    for n in names:
        try:  # the stage and everything it needs, as `experiment run --until` runs them
            hit = next((a for a in plan.ancestors(n) if a.startswith("orpo-")), None)
        except PlanError as e:
            print(f"beside_stages: {e}", file=sys.stderr)
            return 1
        if hit:
            print(f"beside_stages: {n} needs {hit}, whose learning rate the check decides", file=sys.stderr)
            return 1
    print(",".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
