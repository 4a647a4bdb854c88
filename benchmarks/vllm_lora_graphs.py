"""LoRA with CUDA graphs vs eager on vLLM, side by side in one run, on a random-weight model of
Qwen2.5-Coder-0.5B's exact shape (no weights to carry: decode speed does not depend on their
values, and ``ignore_eos`` fixes every completion's length).

Session 6 saw a LoRA engine with CUDA graphs hang at start for over 7 minutes on vLLM 0.26.0's V2
model runner (results/vllm/README.md); vLLM PR #43084 points at the V2 runner's missing LoRA
graph support. This script starts, each in its own process under its own time limit:

- ``graphs-base``: CUDA graphs, no LoRA: the base model's rate, which is also what a merged
  checkpoint (one weight folder per adapter, the issue's alternative) would decode at;
- ``graphs-v1``: CUDA graphs, LoRA enabled, ``VLLM_USE_V2_MODEL_RUNNER=0``;
- ``graphs-v2``: CUDA graphs, LoRA enabled, vLLM's default runner (session 6's hang; not run by default);
- ``eager``: LoRA enabled, ``enforce_eager=True`` (what the backend does today with adapters);

and in each LoRA engine generates the same workload through the base model and through a random
rank-16 adapter on all seven projections (the study's LoRA shape): ``--prompts`` prompts of
``--prompt-tokens`` random token ids sharing a ``--prefix-tokens`` prefix (a schema shared by K
samples and both validators), ``n=8`` samples at T=1.0, ``--max-tokens`` new tokens each.

    python benchmarks/vllm_lora_graphs.py --json results/vllm/lora-graphs.json

Prints engine start seconds and new tokens/s per engine and path, and the ratios.
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

QWEN05_SHAPE = {  # Qwen2.5-Coder-0.5B-Instruct's config.json (architecture fields)
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}
MODES = {  # "lora": False starts the engine without LoRA (the base model's rate with CUDA graphs)
    "graphs-base": {"enforce_eager": False, "lora": False, "env": {}},
    "graphs-v1": {"enforce_eager": False, "lora": True, "env": {"VLLM_USE_V2_MODEL_RUNNER": "0"}},
    "graphs-v2": {"enforce_eager": False, "lora": True, "env": {}},
    "eager": {"enforce_eager": True, "lora": True, "env": {}},
}


def make_model(folder: Path, rank: int) -> tuple[Path, Path]:
    """A random bf16 model of the real shape and a random PEFT adapter (B nonzero) for it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    model_dir, adapter_dir = folder / "model", folder / f"lora-r{rank}"
    if (adapter_dir / "adapter_config.json").exists():
        return model_dir, adapter_dir
    torch.manual_seed(0)
    cfg = Qwen2Config(**{k: v for k, v in QWEN05_SHAPE.items() if k not in ("architectures", "torch_dtype")})
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    peft.save_pretrained(adapter_dir)
    return model_dir, adapter_dir


def child(args: argparse.Namespace) -> None:
    """One engine (one mode): base and LoRA rounds; prints one JSON line."""
    import random

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    mode = MODES[args.mode]
    t0 = time.perf_counter()
    llm = LLM(
        model=args.model_dir,
        skip_tokenizer_init=True,
        dtype="bfloat16",
        enable_lora=mode["lora"],
        **({"max_lora_rank": args.rank, "max_loras": 2} if mode["lora"] else {}),
        enforce_eager=mode["enforce_eager"],
        enable_prefix_caching=True,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        max_model_len=4096,
        seed=0,
    )
    start_s = time.perf_counter() - t0
    rng = random.Random(0)
    prompts = []
    for g in range(0, args.prompts, 8):  # groups of 8 prompts share a prefix (one schema)
        prefix = [rng.randrange(1000, 150000) for _ in range(args.prefix_tokens)]
        for _ in range(min(8, args.prompts - g)):
            tail = [rng.randrange(1000, 150000) for _ in range(args.prompt_tokens - args.prefix_tokens)]
            prompts.append(TokensPrompt(prompt_token_ids=prefix + tail))
    sp = SamplingParams(
        n=8, temperature=1.0, max_tokens=args.max_tokens, ignore_eos=True, detokenize=False, seed=0
    )
    lora = LoRARequest("r", 1, args.adapter_dir)
    out: dict = {"mode": args.mode, "start_s": round(start_s, 1)}
    print(args.mode, "engine started in", round(start_s, 1), "s", flush=True)
    paths = (("lora", lora), ("base", None)) if mode["lora"] else (("base", None),)
    for rnd in range(2):  # round 0 includes the LoRA kernels' first-call compile
        for path, req in paths:
            t = time.perf_counter()
            res = llm.generate(prompts, sp, lora_request=req, use_tqdm=False)
            dt = time.perf_counter() - t
            toks = sum(len(c.token_ids) for r in res for c in r.outputs)
            out[f"{path}_r{rnd}_tok_s"] = round(toks / dt)
            out[f"{path}_r{rnd}_s"] = round(dt, 2)
            print(args.mode, path, rnd, round(dt, 2), "s", round(toks / dt), "tok/s", flush=True)
    print("RESULT " + json.dumps(out), flush=True)
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # graphs-base first: it pays the fresh machine's torch.compile (~115 s in session 6) and warms
    # the cache, so graphs-v1's start measures LoRA graph capture, not compilation (session 8 gave it
    # 200 s as the first engine and could not tell a hang from a slow start)
    ap.add_argument("--modes", default="graphs-base,eager,graphs-v1")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=700)
    ap.add_argument("--prefix-tokens", type=int, default=600)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=300, help="seconds per engine process (a hang costs this)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--adapter-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="lora-graphs-"))
    model_dir, adapter_dir = make_model(work, args.rank)
    results: dict = {
        "args": {k: v for k, v in vars(args).items() if k not in ("mode", "model_dir", "adapter_dir")}
    }
    for mode in args.modes.split(","):
        env = os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} | MODES[mode]["env"]
        cmd = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--model-dir",
            str(model_dir),
            "--adapter-dir",
            str(adapter_dir),
        ] + [
            f"--{k.replace('_', '-')}={v}"
            for k, v in results["args"].items()
            if k not in ("modes", "limit", "work", "json")
        ]
        t = time.perf_counter()
        log = work / f"{mode}.log"  # the child's whole output, kept when it is killed: hang or slow start?
        with log.open("w") as fh:
            try:
                p = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.limit)
                rc: int | str = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        text = log.read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        if lines:
            results[mode] = json.loads(lines[-1][7:])
        else:
            why = f"no result in {args.limit} s" if rc == "timeout" else f"rc {rc}"
            results[mode] = {"error": why, "log_tail": text[-1500:]}
        if args.json:  # beside the summary, so that the lease ships it home
            (Path(args.json).parent / f"{Path(args.json).stem}.{mode}.log").write_text(text)
        results[mode]["wall_s"] = round(time.perf_counter() - t, 1)
        print(mode, json.dumps(results[mode]), flush=True)
        subprocess.run(
            "nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9", shell=True
        )
    print("\nmode        start s   base tok/s   lora tok/s   lora/base   (round 1: kernels compiled)")
    for mode in args.modes.split(","):
        r = results[mode]
        if "error" in r:
            print(f"{mode:10}  error: {r['error'][:100]}")
            continue
        if "lora_r1_tok_s" not in r:
            print(f"{mode:10}  {r['start_s']:7.1f}  {r['base_r1_tok_s']:11,}  {'-':>11}")
            continue
        print(
            f"{mode:10}  {r['start_s']:7.1f}  {r['base_r1_tok_s']:11,}  {r['lora_r1_tok_s']:11,}  "
            f"{r['lora_r1_tok_s'] / r['base_r1_tok_s']:9.2f}"
        )
    ok = [m for m in results if isinstance(results[m], dict) and "lora_r1_tok_s" in results[m]]
    if "graphs-v1" in ok and "eager" in ok:
        g, e = results["graphs-v1"]["lora_r1_tok_s"], results["eager"]["lora_r1_tok_s"]
        results["lora_graphs_over_eager"] = round(g / e, 2)
        print(f"LoRA with graphs (V1 runner) / LoRA eager: {g / e:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(portable_text(json.dumps(results, indent=1)) + "\n")


if __name__ == "__main__":
    main()
