"""Device time of experiments/study-spider-1.5b.yaml, scaled from the v2 estimate.

scripts/study_v2_estimate.py prices every stage of the v2 plan (0.5B agents, one GPU, rates
measured on the H100). The 1.5B plan has the same 110 stages; this scales them:
- tokens of the 1.5B agents (planner samples; the LM selector) cost F15 = 3x a 0.5B token (the
  FLOPs per token; decode of models this small is partly overhead-bound, so 3x is the cautious
  side), critiques and fixes (0.5B) cost what v2 says;
- rollouts run as 4 shards, training data-parallel on 4 GPUs: work / (4 x efficiency), with
  efficiency 1.0 (central) or 0.75 (conservative: the slowest shard, all-reduce, launch);
- a rollout with agents of both sizes starts two engines (2 x 30 s); training starts in 60 s
  (accelerate launch, 4 processes loading the model);
- stages without a GPU, pick-checkpoint (0.5B validators, one GPU) and the probe as in v2;
- a lease: 30 min, less setup (v2's 6.5 min, plus 32 calls of the 1.5B GGUF at ~4 s, its
  join and verification, ~0.3 min, and its dequantization, ~3.4 min: 3x the 0.5B's 67 s on the
  device) and 2 min of shipping the run folder.

    python results/study-spider-1.5b/estimate.py          # from the repository root
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from matsql.experiment.plan import load_plan

ROOT = Path(__file__).resolve().parents[2]
F15, GPUS = 3.0, 4
EFF = {"central_s": 1.0, "conservative_s": 0.75}
SETUP_MIN = 6.5 + 32 * 4 / 60 + 0.3 + 3 * 67 / 60
SHIP_MIN, LEASE_MIN, TRAIN_START_S = 2.0, 30.0, 60.0


def v2_estimator():
    spec = importlib.util.spec_from_file_location("study_v2_estimate", ROOT / "scripts/study_v2_estimate.py")
    assert spec and spec.loader
    est = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = est
    spec.loader.exec_module(est)
    return est


def main() -> None:
    est = v2_estimator()
    plan = load_plan(ROOT / "experiments/study-spider-1.5b.yaml", base_dir=ROOT)
    v = plan.vars
    parts = {k: int(n) for k, n in (x.split("=") for x in str(v["parts"]).split(","))}
    steps = {"orpo": int(v["orpo_steps"]), "save": int(v["save_steps"]), "e1": int(v["e1_steps"]), "sft": 120}
    r = est.measure()
    costs = []
    for name in est.serial_order(plan, ["compare-primary"]):
        argv = plan.stages[name].argv
        c = est.stage_cost(name, argv, parts, r, steps)
        for which, eff in EFF.items():
            if argv[0] == "rollout":
                q = est._questions(argv, parts) * r.runnable
                k = int(est._opt(argv, "--k", "8"))
                ptok = 0.0 if est._opt(argv, "--planner-from") else q * k * r.planner_tok
                rest = c.tokens - ptok  # critiques and fixes: the 0.5B engine
                tps = est.BASE_TPS if c.kind == "rollout (base)" else est.LORA_TPS
                crit = 1.0 if which == "central_s" else est.CRITIQUE_FACTOR
                engines = max((ptok > 0) + (rest > 0), 1)
                s = (ptok * F15 / tps + rest / (tps * crit)) / (GPUS * eff) + est.VLLM_START_S * engines
            elif argv[0] == "train" and argv[1] in ("sft", "orpo"):
                size = F15 if "qwen1.5b" in argv[2] else 1.0
                s = (getattr(c, which) - est.TRAIN_START_S) * size / (GPUS * eff) + TRAIN_START_S
            elif c.kind == "select (LM)":
                s = (getattr(c, which) - est.VLLM_START_S) * F15 + est.VLLM_START_S
            else:
                s = getattr(c, which)
            setattr(c, which, s)
        costs.append(c)
    est.print_kinds(costs)
    print(f"| **total** | {len(costs)} | **{sum(c.central_s for c in costs) / 60:.0f}** | "
          f"**{sum(c.conservative_s for c in costs) / 60:.0f}** |")  # fmt: skip
    work = (LEASE_MIN - SETUP_MIN - SHIP_MIN) * 60
    print(f"\nA {LEASE_MIN:g}-min lease: {SETUP_MIN:.1f} min setup + {SHIP_MIN:g} min shipping, "
          f"{work / 60:.1f} min of stage work.")  # fmt: skip
    for which in EFF:
        leases = est.schedule(costs, work, which)
        print(f"\n{which.removesuffix('_s')}: {len(leases)} leases")
        for i, lease in enumerate(leases, 1):
            names = ", ".join(n for n, _ in lease)
            print(f"- lease {i} ({sum(s for _, s in lease) / 60:.1f} min): {names}")


if __name__ == "__main__":
    main()
