"""Generation stages in a kept worker (``experiment run --warm``) against one process per stage.

A plan of ``--stages`` rollout stages (the same command, seeds 0, 1, ...) runs twice through
the plan runner with the local executor: each stage as its own process, then each in a worker
kept per GPU slot. Both write the same records (``tests/test_experiment_warm.py`` checks it);
this prints each stage's seconds (the runner's manifests) and the ratio of the totals. The
first warm stage pays what a cold one does; the saving is what later stages do not pay again:
process start and imports, and with ``backend: vllm`` the engine start (lease 3: about 20 s and
20 s of a 58 s stage). On a CPU with the echo agents only the first part shows.

    python benchmarks/bench_warm.py --out /tmp/bench-warm                      # echo agents, minibench
    python benchmarks/bench_warm.py --out $OUT/warm --agents experiments/agents/qwen0.5b-vllm-swap.yaml \\
        --benchmark spider-dev --limit 256 --k 8 --shards 2 --gpu-slots 2      # the lent GPU
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from matsql.experiment.executors import LocalExecutor, visible_gpus
from matsql.experiment.manifest import read_manifest
from matsql.experiment.plan import parse_plan
from matsql.experiment.runner import run_plan

ECHO = "defaults: {backend: echo}\nagents: {planner: {}, val-sel: {}, val-cond: {}, fixer: {}}\n"


def plan(args: argparse.Namespace, run_dir: Path, agents: str) -> object:
    data = f" --data {shlex.quote(args.data)}" if args.data else ""
    cmd = (
        f"rollout -b {args.benchmark}{data} -a {shlex.quote(agents)} -o ${{out}} --limit {args.limit} "
        f"--k {args.k} --temperature 1.0 --batch-questions {args.batch_questions} --seed"
    )
    res = {"shards": args.shards} if args.shards > 1 else {}
    stages = {
        f"roll-s{i}": {"cmd": f"{cmd} {i}", "out": f"${{run_dir}}/roll-s{i}.jsonl", "resources": res}
        for i in range(args.stages)
    }
    return parse_plan({"name": "bench-warm", "run_dir": str(run_dir), "stages": stages}, base_dir=Path.cwd())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a new folder for both runs")
    ap.add_argument("--agents", default=None, help="agents file (default: echo agents, written to --out)")
    ap.add_argument("--benchmark", default="minibench")
    ap.add_argument("--data", default=None, help="the benchmark's folder (default: the registry's)")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--limit", type=int, default=16, help="questions per stage")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch-questions", type=int, default=256)
    ap.add_argument("--shards", type=int, default=1, help="processes per stage (the v2 plan: 2)")
    ap.add_argument("--gpu-slots", type=int, default=1)
    ap.add_argument("--gpus", default=None, help="card ids (default: the visible ones; on a CPU: 0)")
    args = ap.parse_args()

    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out}: not empty; give a new folder")
    args.out.mkdir(parents=True, exist_ok=True)
    agents = args.agents
    if agents is None:
        agents = str(args.out / "echo.yaml")
        Path(agents).write_text(ECHO)
    gpus = args.gpus.split(",") if args.gpus else visible_gpus() or ["0"]  # a CPU: one made-up card
    rows = {}
    for mode in ("cold", "warm"):
        p = plan(args, args.out / mode, agents)
        ex = LocalExecutor(echo=False, gpus=gpus, gpu_slots=args.gpu_slots, warm=mode == "warm")
        outcome = run_plan(p, ex)
        assert set(outcome.values()) == {"ran"}, outcome
        rows[mode] = [read_manifest(p.run_dir, n)["seconds"] for n in p.stages]

    print(
        f"{args.stages} rollout stages, {args.benchmark} x {args.limit} questions, K={args.k}, "
        f"{args.shards} process(es) each, agents {agents}"
    )
    print("| stage | one process per stage (s) | kept worker (s) |\n|---|---|---|")
    for i, (c, w) in enumerate(zip(rows["cold"], rows["warm"], strict=True)):
        print(f"| {i} | {c:.2f} | {w:.2f} |")
    cold, warm = sum(rows["cold"]), sum(rows["warm"])
    later_c, later_w = sum(rows["cold"][1:]), sum(rows["warm"][1:])
    print(
        f"total: {cold:.2f} s vs {warm:.2f} s: {cold / warm:.2f}x; "
        f"stages after the first: {later_c:.2f} s vs {later_w:.2f} s: {later_c / max(later_w, 1e-9):.2f}x"
    )
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": rows,
        "ratio_total": cold / warm,
        "ratio_after_first": later_c / max(later_w, 1e-9),
    }
    (args.out / "bench_warm.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
