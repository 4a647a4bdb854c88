"""Does the vllm backend compute what the transformers backend computes?

``--mode greedy``: the planner prompts of the first ``--questions`` runnable spider-dev
questions, decoded greedily by both backends with the same LoRA adapter; prints the share of
identical completions and of identical parsed SQL, and where the first differing completion
parts. ``--adapter random`` builds a rank-8 LoRA on all seven projections with small random
weights (a stand-in for a trained adapter when none is at hand; both backends load the same
folder), ``--adapter PATH`` uses a trained one, ``--adapter none`` the base model.

In float32 the vLLM side's attention multiplies exact float32 too: its Triton attention backend
(the one vLLM picks for float32) would otherwise take TF32 inputs, Triton's default for float32
``tl.dot``. A float32 engine sets ``TRITON_F32_DEFAULT=ieee`` (``vllm_local.engine_env``);
``--triton-f32 tf32`` is session 8's setting, and ``benchmarks/parity_tf32.py`` shows what that
did. vLLM's LoRA kernels take 16-bit inputs only, so an adapter in float32 needs
``--lora-mode swap`` (merged into the weights in float32).

``--mode sampled``: K=8 samples at T=1.0 with a fixed seed through the vllm backend, twice in
one process; writes the completions' sha256 to ``--out`` so that a second process's run can be
compared (two runs of this script with the same arguments must print the same digest).

    python benchmarks/vllm_parity.py --mode greedy --questions 200 --adapter random
    python benchmarks/vllm_parity.py --mode greedy --dtype float32 --adapter PATH --lora-mode swap
    python benchmarks/vllm_parity.py --mode sampled --questions 50 --out a.json   # run twice, compare

``--score OUT.texts.jsonl.gz`` (CPU, no GPU, no vLLM): execution accuracy of both sides' greedy
SQL on spider-dev with Spider's rule, paired: when the texts part, does either engine write better
SQL? Identical quality is what a study needs from an engine swap; identical tokens are not
attainable in bf16 (results/vllm/README.md).

    python benchmarks/vllm_parity.py --score results/vllm/parity_bf16_base.texts.jsonl.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from matsql.evaluate.portable import portable_text


def random_adapter(model_dir: Path, out: Path, r: int = 8, std: float = 0.02, seed: int = 0) -> Path:
    """A PEFT LoRA folder with random A and B (B is zero in a fresh adapter: no effect)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    peft.save_pretrained(str(out))
    return out


def planner_prompts(n: int) -> list[Any]:
    from matsql.agents import planner
    from matsql.benchmarks.registry import load_benchmark

    bench = load_benchmark("spider-dev")
    return [planner.build(q, bench.schema_text(q.db_id)) for q in bench.runnable[:n]]


def vllm_backend(
    model: str, adapter: str | None, gmu: float, dtype: str = "bfloat16", lora_mode: str = "request"
) -> Any:
    from matsql.backends.vllm_local import EngineSettings, VLLMBackend, VLLMEngine
    from matsql.models import dense_folder, load_tokenizer

    folder, digest = dense_folder(model, dtype=dtype)
    settings = EngineSettings(gpu_memory_utilization=gmu, dtype=dtype, lora_mode=lora_mode)
    eng = VLLMEngine(folder, load_tokenizer(folder), f"{model}|{digest[:16]}", settings)
    return VLLMBackend(eng, adapter=adapter)


def triton_f32(dtype: str, choice: str | None, adapter: bool, lora_mode: str) -> str | None:
    """Set (before vLLM starts) how Triton's kernels multiply float32, and refuse what vLLM
    cannot run; returns the setting, or None where it does not apply (16-bit compute)."""
    if dtype != "float32":
        if choice is not None:
            raise SystemExit(f"--triton-f32 applies to --dtype float32 only, not {dtype}")
        return None
    if adapter and lora_mode == "request":
        raise SystemExit(
            "--dtype float32 with an adapter needs --lora-mode swap: vLLM's LoRA kernels take "
            "float16/bfloat16 inputs only"
        )
    setting = choice or "ieee"
    os.environ["TRITON_F32_DEFAULT"] = setting
    # kernels compiled under the other setting must not be reused from Triton's disk cache
    if "TRITON_CACHE_DIR" not in os.environ:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"triton-{setting}-")
    return setting


def score_texts(path: Path) -> dict[str, Any]:
    """Paired EX of the two sides' parsed SQL on the spider-dev questions the texts were made for."""
    import gzip

    from matsql.agents import planner
    from matsql.benchmarks.registry import load_benchmark
    from matsql.sql.ex_eval import official_rule
    from matsql.sql.executor import Executor

    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    bench = load_benchmark("spider-dev")
    qs = bench.runnable[: len(rows)]
    mode = official_rule(bench.name)
    side: dict[str, list[bool]] = {}
    with Executor() as ex:
        for name in ("vllm", "transformers"):
            items = [
                (bench.db_path(q.db_id), planner.parse(r[name]) or "", q.gold_sql)
                for q, r in zip(qs, rows, strict=True)
            ]
            side[name] = ex.score_many(items, mode)
    v, t = side["vllm"], side["transformers"]
    differ = [r["vllm"] != r["transformers"] for r in rows]
    return {
        "texts": path.name,
        "questions": len(rows),
        "rule": mode,
        "ex_vllm": sum(v) / len(v),
        "ex_transformers": sum(t) / len(t),
        "texts_differ": sum(differ),
        "only_vllm_right": sum(a and not b for a, b in zip(v, t, strict=True)),
        "only_transformers_right": sum(b and not a for a, b in zip(v, t, strict=True)),
        "both_right": sum(a and b for a, b in zip(v, t, strict=True)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("greedy", "sampled", "all"), default="all")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--adapter", default="random", help="random, none or a PEFT folder")
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        help="both backends' weights and compute: float32 separates kernel rounding from real differences",
    )
    ap.add_argument("--lora-mode", choices=("request", "swap"), default="request", help="vllm side")
    ap.add_argument(
        "--triton-f32",
        choices=("ieee", "tf32"),
        default=None,
        help="float32 only: how vLLM's Triton attention multiplies (default ieee; tf32 as in session 8)",
    )
    ap.add_argument("--out", default=None, help="write the summary (and sampled digests) here")
    ap.add_argument("--score", default=None, help="a .texts.jsonl.gz this script wrote: paired EX on CPU")
    args = ap.parse_args()
    if args.score:
        res = score_texts(Path(args.score))
        print(json.dumps(res))
        if args.out:
            Path(args.out).write_text(portable_text(json.dumps(res, indent=1)) + "\n")
        return

    from matsql.agents import planner
    from matsql.models import dense_folder

    f32 = triton_f32(args.dtype, args.triton_f32, args.adapter != "none", args.lora_mode)
    prompts = planner_prompts(args.questions)
    folder, _ = dense_folder(args.model, dtype=args.dtype)
    adapter = None
    if args.adapter == "random":
        adapter = str(random_adapter(folder, Path(tempfile.mkdtemp(prefix="lora-")) / "random-r8"))
    elif args.adapter != "none":
        adapter = args.adapter
    res: dict[str, Any] = {
        "mode": args.mode,
        "questions": len(prompts),
        "adapter": args.adapter,
        "dtype": args.dtype,
        "lora_mode": args.lora_mode,
        "triton_f32": f32,
    }
    vb = vllm_backend(args.model, adapter, args.gpu_memory_utilization, args.dtype, args.lora_mode)
    if args.mode in ("greedy", "all"):
        t0 = time.perf_counter()
        v = [o[0] for o in vb.generate(prompts, temperature=0.0, max_tokens=args.max_tokens)]
        res["vllm_s"] = time.perf_counter() - t0
        from matsql.backends.transformers_local import LocalBackend, LocalEngine

        lb = LocalBackend(LocalEngine.load(args.model, dtype=args.dtype), adapter=adapter, batch_size=256)
        t0 = time.perf_counter()
        t = [o[0] for o in lb.generate(prompts, temperature=0.0, max_tokens=args.max_tokens)]
        res["transformers_s"] = time.perf_counter() - t0
        same = [a == b for a, b in zip(v, t, strict=True)]
        same_sql = [planner.parse(a) == planner.parse(b) for a, b in zip(v, t, strict=True)]
        res["identical_text"] = sum(same) / len(same)
        res["identical_sql"] = sum(same_sql) / len(same_sql)
        diffs = []
        for a, b in zip(v, t, strict=True):
            if a != b:
                k = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
                )
                diffs.append(k)
        res["first_difference_chars"] = sorted(diffs)
        res["empty"] = {"vllm": sum(not a for a in v), "transformers": sum(not b for b in t)}
        if args.out:  # the texts, so that a failed check can be read without another lease
            import gzip

            with gzip.open(Path(args.out).with_suffix(".texts.jsonl.gz"), "wt", encoding="utf-8") as fh:
                for i, (a, b) in enumerate(zip(v, t, strict=True)):
                    fh.write(json.dumps({"i": i, "vllm": a, "transformers": b}) + "\n")
        print(
            f"greedy, {len(prompts)} planner prompts, adapter {args.adapter}: identical completions "
            f"{res['identical_text']:.1%}, identical parsed SQL {res['identical_sql']:.1%}; first differing "
            f"character of the others at {diffs[:20]} (vllm {res['vllm_s']:.1f} s, transformers {res['transformers_s']:.1f} s)"
        )
    if args.mode in ("sampled", "all"):
        runs = []
        for _ in range(2):
            out = vb.generate(prompts, n=args.k, temperature=1.0, max_tokens=args.max_tokens, seed=args.seed)
            runs.append(hashlib.sha256(json.dumps(out).encode()).hexdigest())
            distinct = sum(len(set(o)) for o in out) / len(out)
        res["digests"] = runs
        res["repeat_in_process"] = runs[0] == runs[1]
        res["mean_distinct_samples"] = distinct
        print(
            f"sampled, {len(prompts)} prompts x K={args.k}, seed {args.seed}, adapter {args.adapter}: "
            f"two runs in one process identical: {runs[0] == runs[1]}; digest {runs[0][:16]}; "
            f"{distinct:.2f} distinct samples per prompt"
        )
    if args.out:
        Path(args.out).write_text(portable_text(json.dumps(res, indent=1)))
    os._exit(0)


if __name__ == "__main__":
    main()
