"""GPU time of experiments/study-spider-v2.yaml, stage by stage, and a lease-by-lease schedule.

Nothing runs a model. Tokens per question come from the committed study's rollouts
(results/study-spider: the same agents and prompts, trained on fewer questions): text lengths in
characters, turned into tokens by the characters per token that its stage logs imply (tokens/s x
seconds of each shard against the characters the rollout holds). Throughput is what
results/vllm measured on the H100 in session 8 at a rollout call's real size (512 questions):
34,950 kept tokens/s for the base planner with CUDA graphs (30,000 used); critique rows (one
sample of a long prompt each) at 0.45x the planner's rate, which the conservative column applies
to critiques and fixes; LoRA (every trained agent) runs eagerly, at 0.68x the same eager engine's
base rate (session 8) and eager at 0.67x graphs (session 6): 0.46x the base rate. Training: seconds per optimizer step of the committed study's stages. Stages run one at
a time (``experiment run --jobs 1``), in the order the runner picks with ``--prefer``.

    python scripts/study_v2_estimate.py                      # markdown tables to stdout
    python scripts/study_v2_estimate.py --lease-min 30 --setup-min 6.5 --json est.json
    python scripts/study_v2_estimate.py --plan experiments/study-spider.yaml --prefer compare  # v1 on one GPU
    python scripts/study_v2_estimate.py --plan experiments/study-spider.yaml --prefer compare \
        --train-json results/vllm/s10/train.json --train-variant no-ckpt   # training as measured alone

    python scripts/study_v2_estimate.py --train-json results/vllm/s10/train.json --train-variant no-ckpt \
        --lora-mode swap --cpu-beside     # session 11: LoRA merged into the weights, CPU stages beside

``--done runs/study-spider-v2`` leaves out the stages that run folder's manifests say are done,
so the leases count what is left of a run in progress.

``--lora-mode swap`` costs generation with adapters at ``BASE_TPS``: merged into the weights, a
LoRA stage generated at about the base model's rate in session 11 (``results/vllm``).
``--cpu-beside`` runs the stages that say ``gpus: 0`` beside the card (``experiment run --jobs N``):
the leases then hold the GPU stages and the card's waits for CPU stages they need.

``--train-json`` (``benchmarks/bench_train.py``'s output) scales every training stage's loop
seconds by the measured seconds per step of ``--train-variant`` over the committed study's own for
the same recipe (``sft-planner`` for SFT stages, ``orpo-iter1-val-sel-indep`` for ORPO): what
the card does alone, with that variant, against what the committed study's stages took.

The committed plan (``experiments/study-spider.yaml``, issue 15's "whole study on one GPU in one
lease") takes its training stages' loop seconds from the committed study itself.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from matsql.experiment.executors import needs_gpu
from matsql.experiment.plan import load_plan
from matsql.rollout.io import read_records

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "study-spider"
PLAN = ROOT / "experiments" / "study-spider-v2.yaml"

BASE_TPS = 30_000.0  # results/vllm session 8: 34,950 kept tokens/s, base planner, graphs, 512 questions
LORA_TPS = BASE_TPS * (19_859 / 29_223) * (11_914 / 17_823)  # LoRA/base eager (s8) x eager/graphs (s6)
CRITIQUE_FACTOR = 15_639 / 34_950  # results/vllm session 8: validator rows vs planner rows, same engine
# a generation stage's fixed cost on a warm machine (session 14, results/study-spider-v2/lease2/:
# eval-planner-dev-s1 ran 51.5 s, 14 s of it generating): 17 s from the stage's start to its
# engine's (process, imports, questions), 18 s for the engine, 2 s to exit. Session 13 charged
# 50 s (27 s + 11-25 s); sessions 8-11's 30 s left the process start out.
# A sharded rollout's processes share the card and, since session 14, start together (a KV cache
# fixed up front): no extra charge for the second (session 13's start lock cost about 25 s).
VLLM_START_S = 37.0
TRAIN_START_S = 40.0  # model load, data, first/last eval: committed stage wall minus train time
# seconds per optimizer step in the committed study (stages.md: train seconds / steps)
SFT_STEP_S = {"planner": 283.363 / 120, "val-sel": 151.348 / 120, "val-cond": 151.460 / 120,
              "fixer": 159.466 / 120, "selector": 261.466 / 120}  # fmt: skip
ORPO_STEP_S = 29.306 / 18  # orpo-iter2-val-sel-indep, the slowest per step of the ORPO stages
E1_STEP_S = 53.746 / 34
LABELS_S_PER_Q = 7.0 / 128  # labels build on the committed 128 label questions (~7 s)


def _shard_tokens(log: Path) -> float:
    """Generated tokens of a rollout stage: each shard's tokens/s x seconds, summed (the log's
    lines are tagged by shard and wrapped; each shard's lines are joined first)."""
    by_shard: dict[str, list[str]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\[(\d+)\] (.*)", line)
        tag, body = (m.group(1), m.group(2)) if m else ("", line)
        by_shard.setdefault(tag, []).append(body.strip())
    total = 0.0
    for lines in by_shard.values():
        text = " ".join(lines)
        for sec, _, tps in re.findall(
            r"in ([0-9.]+)s: ([0-9.]+) questions/s, ([0-9,]+) generated tokens/s", text
        ):
            total += float(sec) * float(tps.replace(",", ""))
    if not total:
        raise ValueError(f"{log}: no 'in Ns: ... generated tokens/s' lines")
    return total


def _chars(path: Path) -> dict[str, float]:
    recs = read_records(path)
    n = {"q": len(recs), "runnable": 0, "planner": 0, "planner_chars": 0, "critiques": 0, "critique_chars": 0,
         "fixes": 0, "fix_chars": 0}  # fmt: skip
    for r in recs:
        n["runnable"] += bool(r.candidates)
        for c in r.candidates:
            n["planner"] += 1
            n["planner_chars"] += len(c.planner.text)
            for b in c.branches:
                for x in b.critiques.values():
                    n["critiques"] += 1
                    n["critique_chars"] += len(x.text)
                for f in b.fixes:
                    n["fixes"] += 1
                    n["fix_chars"] += len(f.text)
    return n


@dataclass
class Rates:
    planner_tok: float  # tokens per planner sample (SFT planner)
    critique_tok: float
    fix_tok: float
    eval_critiques_q: float  # critiques per evaluation question (2 validators x 8 candidates)
    eval_fixes_q: dict[str, float]  # fixes per evaluation question, by fixer (gated)
    label1: dict[str, float]  # per label question: critiques, fixes (iter1: fix-all, 2 samples)
    label2: dict[str, float]  # iter2: fix-all, 1 sample
    runnable: float  # share of questions with a database
    chars_per_tok: dict[str, float]


def measure() -> Rates:
    planner = _chars(STUDY / "eval-planner.jsonl.gz")
    sft = _chars(STUDY / "eval-sft" / "rollout.jsonl.gz")
    e1 = _chars(STUDY / "eval-collab" / "rollout.jsonl.gz")
    it1 = _chars(STUDY / "rollout-iter1.jsonl.gz")
    it2 = _chars(STUDY / "rollout-iter2-collab.jsonl.gz")
    cpt_planner = planner["planner_chars"] / _shard_tokens(STUDY / "logs" / "eval-planner.log")
    cpt_text = (sft["critique_chars"] + sft["fix_chars"]) / _shard_tokens(STUDY / "logs" / "eval-sft.log")
    return Rates(
        planner_tok=planner["planner_chars"] / planner["planner"] / cpt_planner,
        critique_tok=sft["critique_chars"] / sft["critiques"] / cpt_text,
        fix_tok=sft["fix_chars"] / sft["fixes"] / cpt_text,
        eval_critiques_q=sft["critiques"] / sft["runnable"],
        eval_fixes_q={"sft": sft["fixes"] / sft["runnable"], "e1": e1["fixes"] / e1["runnable"]},
        label1={"critiques": it1["critiques"] / it1["runnable"], "fixes": it1["fixes"] / it1["runnable"]},
        label2={"critiques": it2["critiques"] / it2["runnable"], "fixes": it2["fixes"] / it2["runnable"]},
        runnable=sft["runnable"] / sft["q"],
        chars_per_tok={"planner": cpt_planner, "critique+fix": cpt_text},
    )


def _opt(argv: list[str], name: str, default: str | None = None) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
    return default


def _questions(argv: list[str], parts: dict[str, int]) -> int:
    bench = _opt(argv, "--benchmark")
    if _opt(argv, "--part"):
        return parts[_opt(argv, "--part")]
    n = 1034 if bench == "spider-dev" else 7000
    for opt in ("--sample", "--limit"):  # the committed v1 plan draws its questions this way
        if _opt(argv, opt):
            n = min(n, int(_opt(argv, opt)))
    return n


def train_factors(bench: dict, variant: str, orpo: tuple[dict, str] | None = None) -> dict[str, float]:
    """Per method, seconds per step of ``variant`` in a bench_train JSON over the committed study's
    seconds per step of the same recipe's stage (see module doc). ``orpo``: another bench JSON and
    variant for ORPO (session 13 measured SFT alone)."""
    t = json.loads((STUDY / "collect.json").read_text(encoding="utf-8"))["training"]
    out = {}
    for method, stage in (("sft", "sft-planner"), ("orpo", "orpo-iter1-val-sel-indep")):
        b, var = orpo if (method == "orpo" and orpo) else (bench, variant)
        row = b["methods"][method]["variants"][var]
        out[method] = float(row["s_per_step"]) / (float(t[stage]["train_runtime_s"]) / int(t[stage]["steps"]))
    return out


def committed_train_s() -> dict[str, float]:
    """Training-loop seconds of each stage of the committed study (results/study-spider)."""
    t = json.loads((STUDY / "collect.json").read_text(encoding="utf-8"))["training"]
    return {name: float(v["train_runtime_s"]) for name, v in t.items() if "train_runtime_s" in v}


@dataclass
class Cost:
    stage: str
    kind: str
    tokens: float  # generated tokens (0 for training and CPU stages)
    central_s: float
    conservative_s: float
    resumable: bool  # a rollout: an unfinished one resumes on the next lease
    # --warm-start-s: seconds of engine start taken off (a lease's first GPU stage pays them back)
    warm_cut: float = 0.0


def stage_cost(
    name: str,
    argv: list[str],
    parts: dict[str, int],
    r: Rates,
    steps: dict[str, int],
    measured_train_s: dict[str, float] | None = None,
    train_factor: dict[str, float] | None = None,
    lora_tps: float = LORA_TPS,
) -> Cost:
    """``measured_train_s``: training-loop seconds per stage name, used where a stage has one;
    ``train_factor``: per method (sft, orpo), a factor on training-loop seconds (``train_factors``);
    ``lora_tps``: the rate of generation with adapters (``LORA_TPS`` per request, eager;
    ``BASE_TPS`` with ``lora_mode: swap``)."""
    cmd = argv[0]
    if cmd == "rollout":
        q = _questions(argv, parts) * r.runnable
        k = int(_opt(argv, "--k", "8"))
        planner_from = _opt(argv, "--planner-from") is not None
        no_validators = _opt(argv, "--validators") == ""
        adapters = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--adapter"]
        base = not adapters
        ptok = 0.0 if planner_from else q * k * r.planner_tok
        ctok = ftok = 0.0
        if not no_validators:
            branches = int(_opt(argv, "--branches", "1"))
            if "--fix-all" in argv:
                lab = r.label1 if int(_opt(argv, "--fixer-samples", "1")) > 1 else r.label2
                ctok = q * lab["critiques"] * r.critique_tok * (k / 8)
                ftok = q * lab["fixes"] * r.fix_tok * (k / 8)
            else:
                fixer = "e1" if any(a.startswith("fixer=") and "fixer-e1" in a for a in adapters) else "sft"
                ctok = q * r.eval_critiques_q * (k / 8) * branches * r.critique_tok
                ftok = q * r.eval_fixes_q[fixer] * (k / 8) * r.fix_tok
        tps = BASE_TPS if base else lora_tps
        central = (ptok + ctok + ftok) / tps
        conservative = ptok / tps + (ctok + ftok) / (tps * CRITIQUE_FACTOR)
        kind = "rollout (base)" if base else "rollout (LoRA)"
        return Cost(name, kind, ptok + ctok + ftok, central + VLLM_START_S, conservative + VLLM_START_S, True)
    if cmd == "train" and argv[1] in ("sft", "orpo") and name in (measured_train_s or {}):
        s = measured_train_s[name] * (train_factor or {}).get(argv[1], 1.0)  # type: ignore[index]
        return Cost(name, f"train {argv[1]}", 0.0, s + TRAIN_START_S, s + TRAIN_START_S, False)
    if cmd == "train" and argv[1] in ("sft", "orpo"):
        agent = next((a for a in SFT_STEP_S if f"sft-{a}." in argv[2]), None)
        if argv[1] == "orpo":
            s = steps["orpo"] * ORPO_STEP_S
        elif "fixer-e1" in argv[2]:
            s = steps["e1"] * E1_STEP_S
        else:
            s = steps["sft"] * SFT_STEP_S[agent or "planner"]
        s *= (train_factor or {}).get(argv[1], 1.0)
        return Cost(name, f"train {argv[1]}", 0.0, s + TRAIN_START_S, s + TRAIN_START_S, False)
    if cmd == "train" and argv[1] == "pick-checkpoint":
        n_ckpt = steps["orpo"] // steps["save"] + (steps["orpo"] % steps["save"] != 0)
        n_ckpt = 1 if "--final-only" in argv else n_ckpt  # an SFT reference: its final adapter
        items = parts["heldout"] * r.runnable * 8 * int(_opt(argv, "--samples", "1"))
        tok = n_ckpt * items * r.critique_tok
        return Cost(name, "pick-checkpoint", tok, tok / lora_tps + VLLM_START_S,
                    tok / (lora_tps * CRITIQUE_FACTOR) + VLLM_START_S, False)  # fmt: skip
    if cmd == "select" and "--agents" in argv:  # the LM selector: prompts only, 8-token answers
        return Cost(name, "select (LM)", 0.0, 25.0 + VLLM_START_S, 60.0 + VLLM_START_S, False)
    if cmd == "diagnose" and "--counterfactual" in argv:
        return Cost(name, "probe (GPU)", 0.0, 20.0 + VLLM_START_S, 60.0 + VLLM_START_S, False)
    if cmd == "labels":
        s = parts.get("label", 128) * LABELS_S_PER_Q  # the committed plan: 128 label questions
        return Cost(name, "labels (CPU)", 0.0, s, 2 * s, False)
    if cmd == "train" and argv[1] == "sft-data":
        return Cost(name, "sft-data (CPU)", 0.0, 60.0, 120.0, False)
    return Cost(name, f"{cmd} (CPU)", 0.0, 8.0, 20.0, False)


GENERATION_KINDS = ("rollout (base)", "rollout (LoRA)", "pick-checkpoint", "select (LM)", "probe (GPU)")


def warm_costs(costs: list[Cost], done: set[str], start_s: float) -> list[Cost]:
    """Costs under ``experiment run --warm``: a generation stage whose previous GPU stage (of
    those still to run, in this order) also generated finds its worker's engine started and is
    charged ``start_s`` instead of :data:`VLLM_START_S`; after a training stage the workers have
    been stopped for it, so the next generation stage pays in full, as does the first. A lease's
    first GPU stage pays in full too (a fresh machine): :func:`schedule` adds ``warm_cut`` back."""
    from dataclasses import replace

    out: list[Cost] = []
    prev_generated = False
    for c in costs:
        if c.stage in done or "CPU" in c.kind:
            out.append(c)
            continue
        gen = c.kind in GENERATION_KINDS
        if gen and prev_generated:
            cut = VLLM_START_S - start_s
            c = replace(c, central_s=c.central_s - cut, conservative_s=c.conservative_s - cut, warm_cut=cut)
        out.append(c)
        prev_generated = gen
    return out


def serial_order(plan, prefer: list[str]) -> list[str]:
    """The order `experiment run --jobs 1 --prefer ...` starts stages: the best-ranked ready one."""
    rank = {n: i for i, n in enumerate(plan.priority_order(prefer))}
    done: set[str] = set()
    order: list[str] = []
    while len(order) < len(plan.stages):
        ready = [n for n in plan.stages if n not in done and all(d in done for d in plan.stages[n].needs)]
        nxt = min(ready, key=rank.__getitem__)
        order.append(nxt)
        done.add(nxt)
    return order


def _units(costs: list[Cost]) -> list[list[Cost]]:
    """Stages that must share a lease: an ORPO run and its pick, the pick pulled forward to run
    next (the run's checkpoints stay on the machine: `study.sh pack` leaves them behind)."""
    rest = list(costs)
    units: list[list[Cost]] = []
    while rest:
        c = rest.pop(0)
        pick = next((x for x in rest if x.stage == c.stage.replace("orpo-", "pick-", 1)), None)
        if c.stage.startswith("orpo-") and pick is not None:
            rest.remove(pick)
            units.append([c, pick])
        else:
            units.append([c])
    return units


def schedule(costs: list[Cost], work_s: float, which: str) -> list[list[tuple[str, float]]]:
    """Pack stages into leases of ``work_s`` seconds: a rollout may continue on the next lease
    (its shard file is shipped and resumes); any other stage (an ORPO run with its pick) that
    does not fit starts on the next. A lease's first GPU stage finds no kept worker (a fresh
    machine): it pays back what ``--warm-start-s`` took off it (``warm_cut``)."""
    from dataclasses import replace

    leases: list[list[tuple[str, float]]] = [[]]
    left = work_s
    fresh = True  # no GPU stage in the current lease yet

    def first_paid(unit: list[Cost]) -> list[Cost]:
        head = unit[0]
        return [replace(head, **{which: getattr(head, which) + head.warm_cut}), *unit[1:]]

    def new_lease() -> None:
        nonlocal left, fresh
        leases.append([])
        left, fresh = work_s, True

    for unit in _units(costs):
        gpu = any("CPU" not in c.kind for c in unit)
        if len(unit) > 1 or not unit[0].resumable:
            if sum(getattr(c, which) for c in (first_paid(unit) if fresh else unit)) > left:
                new_lease()
            if fresh and gpu:
                unit = first_paid(unit)
            total = sum(getattr(c, which) for c in unit)
            leases[-1] += [(c.stage, getattr(c, which)) for c in unit]
            left -= total
            fresh = fresh and not gpu
            continue
        c = unit[0]
        while True:
            need = getattr(first_paid([c])[0] if fresh else c, which)
            if need <= left:
                leases[-1].append((c.stage, need))
                left -= need
                fresh = False
                break
            if left > 60:
                leases[-1].append((c.stage + " (part)", left))
                c = replace(c, **{which: need - left})
                new_lease()
            else:
                new_lease()
    return leases


def gpu_lane(plan, costs: list[Cost], which: str, prefer: list[str]) -> tuple[list[Cost], float]:
    """``experiment run --jobs N`` with CPU stages beside the GPU (``gpus: 0``, no slot): one GPU
    stage at a time, the best-ranked ready one, while every CPU stage starts as soon as its inputs
    are done. Returns the GPU stages in the order they start, each costed as its own seconds plus
    the card's idle wait before it (for CPU stages it needs), then a last entry for CPU stages
    that end after the last GPU stage; and the makespan."""
    from dataclasses import replace

    cost = {c.stage: c for c in costs}
    rank = {n: i for i, n in enumerate(plan.priority_order(prefer))}
    needs = {n: plan.stages[n].needs for n in cost}
    gpu = [n for n in cost if needs_gpu(plan.stages[n])]
    finish: dict[str, float] = {}

    def settle_cpu() -> None:
        changed = True
        while changed:
            changed = False
            for n in cost:
                if n not in finish and n not in gpu and all(d in finish for d in needs[n]):
                    finish[n] = max((finish[d] for d in needs[n]), default=0.0) + getattr(cost[n], which)
                    changed = True

    lane: list[Cost] = []
    free = 0.0
    todo = list(gpu)
    while todo:
        settle_cpu()
        known = [n for n in todo if all(d in finish for d in needs[n])]
        ready_at = {n: max((finish[d] for d in needs[n]), default=0.0) for n in known}
        now = [n for n in known if ready_at[n] <= free]
        nxt = min(now, key=rank.__getitem__) if now else min(known, key=lambda n: (ready_at[n], rank[n]))
        start = max(free, ready_at[nxt])
        own = getattr(cost[nxt], which)
        lane.append(replace(cost[nxt], **{which: start - free + own}))
        finish[nxt] = free = start + own
        todo.remove(nxt)
    settle_cpu()
    end = max(finish.values(), default=0.0)
    if end > free:
        lane.append(
            Cost("CPU stages after the last GPU stage", "CPU tail", 0.0, end - free, end - free, False)
        )
    return lane, end


def print_kinds(costs: list) -> None:
    """The per-kind table (stages, central and conservative minutes), CPU stages summed apart."""
    by_kind: dict[str, list[float]] = {}
    for c in costs:
        by_kind.setdefault(c.kind, [0.0, 0.0, 0])
        by_kind[c.kind][0] += c.central_s
        by_kind[c.kind][1] += c.conservative_s
        by_kind[c.kind][2] += 1
    print("| kind | stages | central (min) | conservative (min) |")
    print("|---|---|---|---|")
    for k, (a, b, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]):
        print(f"| {k} | {n} | {a / 60:.1f} | {b / 60:.1f} |")
    cpu = [c for c in costs if "CPU" in c.kind]
    print(f"| of which CPU stages | {len(cpu)} | "
          f"{sum(c.central_s for c in cpu) / 60:.1f} | {sum(c.conservative_s for c in cpu) / 60:.1f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", type=Path, default=PLAN)
    ap.add_argument("--prefer", default="compare-primary")
    ap.add_argument("--lease-min", type=float, default=30.0)
    ap.add_argument(
        "--setup-min", type=float, default=2.5,
        help="machine start, parts, join (session 14: 2.4 min with a sparse tree, scripts/device/README.md)",
    )  # fmt: skip
    ap.add_argument("--done", type=Path, default=None, help="a run folder: leave out the stages done there")
    ap.add_argument(
        "--ship-min", type=float, default=2.0, help="run folder in (carry) and out (final) per lease"
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--train-json", type=Path, default=None, help="bench_train.py output (see module doc)")
    ap.add_argument("--train-variant", default="committed", help="its variant to scale training by")
    ap.add_argument(
        "--orpo-json", type=Path, default=None, help="ORPO from this bench_train.py output instead"
    )
    ap.add_argument("--orpo-variant", default="committed", help="its variant (with --orpo-json)")
    ap.add_argument(
        "--lora-mode", choices=("request", "swap"), default="request",
        help="request: adapters at LORA_TPS (eager); swap: merged into the weights, at BASE_TPS",
    )  # fmt: skip
    ap.add_argument(
        "--cpu-beside", action="store_true",
        help="CPU stages (gpus: 0) run beside the GPU stages (experiment run --jobs N): leases hold GPU stages and the card's waits",
    )  # fmt: skip
    ap.add_argument(
        "--warm-start-s", type=float, default=None,
        help="model experiment run --warm: this many seconds of fixed cost for a generation stage after another",
    )  # fmt: skip
    args = ap.parse_args()
    factor = (
        train_factors(
            json.loads(args.train_json.read_text()),
            args.train_variant,
            (json.loads(args.orpo_json.read_text()), args.orpo_variant) if args.orpo_json else None,
        )
        if args.train_json
        else None
    )
    if factor:
        print(f"Training loop seconds x {factor['sft']:.2f} (SFT), x {factor['orpo']:.2f} (ORPO): "
              f"{args.train_variant} in {args.train_json.as_posix()}"
              + (f", ORPO {args.orpo_variant} in {args.orpo_json.as_posix()}" if args.orpo_json else "")
              + " against the committed study's stages\n")  # fmt: skip
    plan = load_plan(args.plan, base_dir=ROOT)
    v = plan.vars
    if "parts" in v:  # the v2 plan: a partition of spider-train, ORPO steps and saves as plan vars
        parts = {k: int(n) for k, n in (x.split("=") for x in str(v["parts"]).split(","))}
        steps = {
            "orpo": int(v["orpo_steps"]),
            "save": int(v["save_steps"]),
            "e1": int(v["e1_steps"]),
            "sft": 120,
        }
        measured: dict[str, float] = {}
    else:  # the committed plan (experiments/study-spider.yaml): its own measured training stages
        parts, steps, measured = {}, {}, committed_train_s()
    r = measure()
    order = serial_order(plan, [p for p in args.prefer.split(",") if p])
    lora_tps = BASE_TPS if args.lora_mode == "swap" else LORA_TPS
    costs = [stage_cost(n, plan.stages[n].argv, parts, r, steps, measured, factor, lora_tps) for n in order]
    prefer = [p for p in args.prefer.split(",") if p]
    done = set()
    if args.done:  # the runner's own judgement: done and not stale in that run folder
        from matsql.experiment.runner import stage_status

        there = load_plan(args.plan, {"run_dir": str(args.done.resolve())}, base_dir=ROOT)
        done = {n for n, st in stage_status(there).items() if st == "done"}
    if done:
        from dataclasses import replace

        costs = [replace(c, central_s=0.0, conservative_s=0.0) if c.stage in done else c for c in costs]
        print(f"Done in {args.done.as_posix()}: {len(done & set(order))} of {len(order)} stages (costed 0)\n")
    if args.warm_start_s is not None:
        costs = warm_costs(costs, done, args.warm_start_s)
        print(f"Kept workers (experiment run --warm): a generation stage right after another is charged "
              f"{args.warm_start_s:g} s of fixed cost instead of {VLLM_START_S:g} s (an assumption until a lease "
              "measures it); after a training stage, and first, the full cost\n")  # fmt: skip
    if args.lora_mode == "swap":
        print(
            f"LoRA swapped into the weights (lora_mode: swap): adapters at the base rate, {BASE_TPS:,.0f} tokens/s\n"
        )
    print(f"Measured (committed study): {r.planner_tok:.0f} tokens per planner sample, {r.critique_tok:.0f} per "
          f"critique, {r.fix_tok:.0f} per fix; chars/token {r.chars_per_tok['planner']:.2f} (planner), "
          f"{r.chars_per_tok['critique+fix']:.2f} (critiques, fixes); per evaluation question "
          f"{r.eval_critiques_q:.1f} critiques, {r.eval_fixes_q['sft']:.1f} fixes (SFT fixer) / "
          f"{r.eval_fixes_q['e1']:.1f} (E1); per label question {r.label1['critiques']:.1f} critiques + "
          f"{r.label1['fixes']:.1f} fixes (iter1), {r.label2['critiques']:.1f} + {r.label2['fixes']:.1f} "
          f"(iter2); {100 * r.runnable:.1f}% of questions runnable\n")  # fmt: skip
    print("| # | stage | kind | generated tokens | central (min) | conservative (min) |")
    print("|---|---|---|---|---|---|")
    for i, c in enumerate(costs, 1):
        tok = f"{c.tokens / 1e6:.2f} M" if c.tokens else "-"
        print(
            f"| {i} | {c.stage} | {c.kind} | {tok} | {c.central_s / 60:.1f} | {c.conservative_s / 60:.1f} |"
        )
    tot_c, tot_k = sum(c.central_s for c in costs), sum(c.conservative_s for c in costs)
    print(
        f"| | **total** | | {sum(c.tokens for c in costs) / 1e6:.1f} M | **{tot_c / 60:.0f}** | **{tot_k / 60:.0f}** |\n"
    )
    print_kinds(costs)
    work = (args.lease_min - args.setup_min - args.ship_min) * 60
    out = {"rates": r.__dict__, "order": order, "costs": [c.__dict__ for c in costs], "leases": {}}
    for which in ("central_s", "conservative_s"):
        lane = costs
        if args.cpu_beside:
            lane, end = gpu_lane(plan, costs, which, prefer)
            busy = sum(getattr(c, which) for c in costs if needs_gpu(plan.stages[c.stage]))
            print(f"\nCPU stages beside the GPU ({which.removesuffix('_s')}): {end / 60:.0f} min from the first "
                  f"stage to the last, the card busy {busy / 60:.0f} of them")  # fmt: skip
            out.setdefault("makespan_s", {})[which] = end
        leases = schedule([c for c in lane if c.stage not in done], work, which)
        out["leases"][which] = leases
        print(f"\nLeases ({which.removesuffix('_s')}: {work / 60:.1f} min of stage work in each {args.lease_min:g}-min lease): "
              f"{len(leases)}")  # fmt: skip
        for i, lease in enumerate(leases, 1):
            names = [n for n, _ in lease]
            used = sum(s for _, s in lease) / 60
            span = f"{names[0]} .. {names[-1]}" if names else "-"
            print(f"- lease {i}: {len(names)} stage(s), {used:.1f} min: {span}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
