"""Training throughput of the study's SFT and ORPO stages, recipe variants side by side (issue
"GPU generation on vLLM", item 3): the committed recipe against variants that drop what may
waste an H100 on a 0.5B LoRA run (activation checkpointing, small per-device batches, padding
from length-mixed batches). Every variant trains the same rows for the same number of optimizer
steps at the same effective batch, through `matsql train`, so the ratios are the stages' own.

    python benchmarks/bench_train.py --rollouts results/study-spider/rollout-iter1.jsonl.gz \
        --steps 30 --json results/train-speed/bench.json

Prints, per method and variant: seconds per optimizer step (training loop only, from TRL's
``train_runtime``), sequences/s, approximate tokens/s (sequences x the median row length, no
padding), the wall time of the whole `matsql train` call (load + tokenise + train + eval + save)
and the ratio to the committed recipe. A variant that fails (say, out of memory) is reported
and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from matsql.evaluate.portable import portable_text

ROOT = Path(__file__).resolve().parents[1]

# name -> overrides on top of the committed recipe (effective batch kept at 32 sequences for SFT
# and 16 pairs for ORPO: per-device x accumulation). Each variant sets activation checkpointing
# itself: the committed recipes had it on until session 10 measured 1.40x without it
# (results/vllm/s10/train.json: its "committed" is today's "ckpt").
SFT_VARIANTS: dict[str, list[str]] = {
    "committed": [],
    "ckpt": ["trainer.gradient_checkpointing=true"],
    "no-ckpt": ["trainer.gradient_checkpointing=false"],
    "no-ckpt-bs32": [
        "trainer.gradient_checkpointing=false",
        "trainer.per_device_train_batch_size=32",
        "trainer.gradient_accumulation_steps=1",
    ],
    "no-ckpt-bs32-bylen": [
        "trainer.gradient_checkpointing=false",
        "trainer.per_device_train_batch_size=32",
        "trainer.gradient_accumulation_steps=1",
        "trainer.train_sampling_strategy=group_by_length",  # transformers 5: was group_by_length
    ],
    # Liger's Triton kernels (TRL's `use_liger_kernel`): the loss fused with the LM head, so the
    # 151k-vocabulary logits of 32 sequences are never held whole. Session 12: two SFT stages at
    # half an H100 each ran out of memory without activation checkpointing (38 of 39.6 GiB),
    # so sharing the card needs either this or checkpointing back
    "no-ckpt-liger": ["trainer.gradient_checkpointing=false", "trainer.use_liger_kernel=true"],
    "no-ckpt-bs32-liger": [
        "trainer.gradient_checkpointing=false",
        "trainer.per_device_train_batch_size=32",
        "trainer.gradient_accumulation_steps=1",
        "trainer.use_liger_kernel=true",
    ],
    # TRL 1.16's SFT trainer already computes the loss from the LM head in chunks (add_fused_lm_head),
    # so what fills the card is the layers' saved activations, and what slows it is elementwise work:
    # PEFT's LoRA dropout is one more kernel and one more saved tensor per adapted module (7 a layer);
    # at 0 it is an identity. Length-grouped batches cut the padding of length-mixed ones.
    "no-ckpt-nodrop-liger": [
        "trainer.gradient_checkpointing=false",
        "trainer.use_liger_kernel=true",
        "peft.dropout=0.0",
    ],
    "no-ckpt-nodrop-bylen-liger": [
        "trainer.gradient_checkpointing=false",
        "trainer.use_liger_kernel=true",
        "peft.dropout=0.0",
        "trainer.train_sampling_strategy=group_by_length",
    ],
}
# An "env:NAME=VALUE" item sets an environment variable of the `matsql train` call instead.
ORPO_VARIANTS: dict[str, list[str]] = {
    "committed": [],
    # every position's logits, as before session 13 (the loss reads only the completions')
    "all-logits": ["env:MATSQL_ORPO_LOGITS=all"],
    # session 12's ORPO: LoRA dropout 0.05 and every position's logits
    "before-s13": ["env:MATSQL_ORPO_LOGITS=all", "peft.dropout=0.05"],
    "ckpt": ["trainer.gradient_checkpointing=true"],
    "no-ckpt": ["trainer.gradient_checkpointing=false"],
    "no-ckpt-bs16": [
        "trainer.gradient_checkpointing=false",
        "trainer.per_device_train_batch_size=16",
        "trainer.gradient_accumulation_steps=1",
    ],
    # batches of pairs of similar length: random batches of 8 pairs are 33% padding on the v2
    # study's iter1 pairs, grouped 1% (benchmarks/orpo_padding.py, results/vllm/s19)
    "no-ckpt-bylen": [
        "trainer.gradient_checkpointing=false",
        "trainer.train_sampling_strategy=group_by_length",
    ],
}


def matsql(*args: str, log: Path, env_extra: dict[str, str] | None = None) -> float:
    """Run one matsql command, its output to ``log``; returns wall seconds (raises on failure)."""
    t = time.time()
    with log.open("w") as fh:
        env = os.environ | {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
        }
        env |= env_extra or {}
        rc = subprocess.call(
            [sys.executable, "-m", "matsql.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env
        )
    if rc:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(f"matsql {args[0]} {args[1]} failed (rc {rc}): " + " | ".join(tail))
    return time.time() - t


def measure(method: str, recipe: str, data: Path, steps: int, overrides: list[str], out: Path) -> dict:
    sets = [
        f"output_dir={out}",
        f"data.sources.0.path={data}",
        f"data.eval_sources.0.path={data}",
        f"trainer.max_steps={steps}",
        "trainer.save_strategy=no",
        "trainer.eval_strategy=no",  # evaluation before and after training still runs (same for all)
        "init_from=null",
        *(o for o in overrides if not o.startswith("env:")),
    ]
    env = dict(o.removeprefix("env:").split("=", 1) for o in overrides if o.startswith("env:"))
    args = ["train", method, recipe]
    for s in sets:
        args += ["--set", s]
    wall = matsql(*args, log=out.with_suffix(".log"), env_extra=env)
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    runtime = metrics["train"]["train_runtime"]
    tok = run["train_tokens"]  # medians of the rows trained (prompt, completion; no padding)
    row_len = tok["prompt_tokens"].get("median", 0) + tok["completion_tokens"].get("median", 0)
    seqs = steps * run["effective_batch_size"] * (2 if method == "orpo" else 1)  # ORPO: chosen + rejected
    return {
        "train_runtime_s": round(runtime, 2),
        "s_per_step": round(runtime / steps, 3),
        "seqs_per_s": round(seqs / runtime, 1),
        "tokens_per_s_approx": round(seqs * row_len / runtime),  # median row length x sequences
        "wall_s": round(wall, 1),
        "rows": tok["rows"],
        "median_row_tokens": row_len,
        "peak_gpu_memory_gib": run.get("peak_gpu_memory_gib"),  # what sharing a card must leave it
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", default="results/study-spider/rollout-iter1.jsonl.gz")
    ap.add_argument("--benchmark", default="spider-train")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--methods", default="sft,orpo")
    ap.add_argument("--variants", default="", help="comma list (default: all of a method's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="override for every variant (e.g. model.path=smollm2-135m-instruct for a CPU try)",
    )
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    results: dict = {"steps": args.steps, "rollouts": args.rollouts, "methods": {}}
    methods = args.methods.split(",")
    if "sft" in methods:
        sft_data = work / "sft-data"
        if not (sft_data / "planner").exists():
            matsql(
                "train",
                "sft-data",
                "--agent",
                "planner",
                "--benchmark",
                args.benchmark,
                "--rollouts",
                args.rollouts,
                "--test-frac",
                "0.05",
                "--out",
                str(sft_data),
                log=work / "sft-data.log",
            )
    if "orpo" in methods:
        labels = work / "labels"
        if not labels.exists():
            matsql(
                "labels",
                "build",
                "--agent",
                "val-sel",
                "--mode",
                "independent",
                "--rollouts",
                args.rollouts,
                "--out",
                str(labels),
                log=work / "labels.log",
            )
    chosen = set(filter(None, args.variants.split(",")))
    for method in methods:
        if method == "sft":
            recipe, data, variants = (
                "recipes/qwen0.5b/sft-planner.v1.yaml",
                work / "sft-data" / "planner",
                SFT_VARIANTS,
            )
        else:
            recipe = "recipes/qwen0.5b/orpo-iter1-val-sel-indep.v1.yaml"
            data, variants = work / "labels" / "pairs", ORPO_VARIANTS
        rows: dict = {}
        for name, over in variants.items():
            if chosen and name not in chosen:
                continue
            try:
                rows[name] = measure(
                    method, recipe, data, args.steps, [*args.extra, *over], work / f"{method}-{name}"
                )
            except Exception as e:  # report and go on: one variant's OOM must not hide the others
                rows[name] = {"error": str(e)[:400]}
            print(method, name, json.dumps(rows[name]), flush=True)
        base = rows.get("committed", {}).get("s_per_step")
        for r in rows.values():
            if base and r.get("s_per_step"):
                r["speedup_vs_committed"] = round(base / r["s_per_step"], 2)
        results["methods"][method] = {"recipe": recipe, "variants": rows}
    print("\nmethod  variant               s/step  seqs/s  tokens/s   wall s  speedup  peak GiB")
    for method, m in results["methods"].items():
        for name, r in m["variants"].items():
            if "error" in r:
                print(f"{method:6}  {name:20}  error: {r['error'][:80]}")
                continue
            print(
                f"{method:6}  {name:20}  {r['s_per_step']:6.2f}  {r['seqs_per_s']:6.1f}  "
                f"{r['tokens_per_s_approx']:8d}  {r['wall_s']:7.1f}  {r.get('speedup_vs_committed', 1.0):.2f}x"
                f"  {r['peak_gpu_memory_gib'] if r.get('peak_gpu_memory_gib') is not None else '-':>8}"
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(portable_text(json.dumps(results, indent=2)) + "\n")


if __name__ == "__main__":
    main()
