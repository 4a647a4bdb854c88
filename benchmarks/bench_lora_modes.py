"""LoRA on the vllm backend, three ways side by side in one run (issue 15: "LoRA adapters per
request or merged checkpoints, whichever measures faster"): the base model (no adapter), the
planner and validators each with their own adapter as vLLM LoRARequests (``lora_mode: request``,
eager), and the same adapters merged into the weights before each stage's calls
(``lora_mode: swap``, CUDA graphs). Each way runs ``bench_generate.py --paths vllm`` in its own
process (a fresh engine on an empty card), on the same workload and adapters.

    python benchmarks/bench_lora_modes.py --questions 512 --json lora-modes.json   # GPU

Prints kept new tokens/s per way and stage, each way's engine start, and the ratios
request/base, swap/base and swap/request.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from matsql.backends.vllm_local import EngineSettings
from matsql.evaluate.portable import portable_text

HERE = Path(__file__).resolve().parent
MODES = ("none", "request", "swap")


def make_adapters(model: str) -> str:
    """Two random rank-8 adapters for ``model``'s bf16 folder, made once for every way: absolute
    paths, since the ways' JSON holds them made relative (``portable_text``; session 11's swap
    way failed on one)."""
    from matsql.models import dense_folder

    sys.path.insert(0, str(HERE))
    from bench_generate import random_adapters

    return ",".join(str(Path(a).resolve()) for a in random_adapters(dense_folder(model)[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--questions", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=EngineSettings.max_num_seqs)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    ap.add_argument("--adapters", default=None, help="PLANNER_DIR,VALIDATOR_DIR (default: two random ones)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-lora-modes-"))
    if args.adapters:
        adapters = ",".join(str(Path(a).resolve()) for a in args.adapters.split(","))
    else:
        adapters = make_adapters(args.model)
    res: dict = {"args": vars(args), "modes": {}}
    for mode in MODES:
        out = work / f"{mode}.json"
        cmd = [
            sys.executable, str(HERE / "bench_generate.py"), "--paths", "vllm", "--questions", str(args.questions),
            "--max-num-seqs", str(args.max_num_seqs), "--gpu-memory-utilization", str(args.gpu_memory_utilization),
            "--lora-mode", mode, "--json", str(out), "--model", args.model,
        ]  # fmt: skip
        if mode != "none":
            cmd += ["--adapters", adapters]
        rc = subprocess.call(cmd)
        if rc or not out.is_file():
            res["modes"][mode] = {"error": f"bench_generate exited {rc}"}
            print(f"{mode}: failed (rc {rc})", flush=True)
            continue
        r = json.loads(out.read_text())
        res["modes"][mode] = {"total": r["vllm_total"], "stages": r["vllm"], "start_s": r["vllm_start_s"]}
        if "swaps" in r:  # swap mode: weight loads in the measured run, within its seconds
            res["modes"][mode]["swaps"] = r["swaps"]
    print(
        f"\n{args.questions} spider-dev questions, planner K=8 + 2 critiques per candidate, one engine per way"
    )
    rates = {}
    for mode, m in res["modes"].items():
        if "error" in m:
            continue
        rates[mode] = m["total"]["new_tokens_per_s"]
        stages = "; ".join(f"{s} {v['new_tokens'] / v['seconds']:,.0f} tok/s" for s, v in m["stages"].items())
        swaps = f"; {m['swaps']['count']} swaps in {m['swaps']['seconds']:.1f} s" if "swaps" in m else ""
        print(
            f"  {mode:8s} {rates[mode]:9,.0f} kept new tokens/s  [{stages}]  engine start {m['start_s']:.0f} s"
            + swaps
        )
    for a, b in (("request", "none"), ("swap", "none"), ("swap", "request")):
        if a in rates and b in rates:
            res[f"ratio_{a}_over_{b}"] = rates[a] / rates[b]
            print(f"  ratio {a} / {'base' if b == 'none' else b}: {rates[a] / rates[b]:.2f}x")
    if args.json:
        Path(args.json).write_text(portable_text(json.dumps(res, indent=1)))


if __name__ == "__main__":
    main()
