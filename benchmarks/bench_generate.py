"""Rollout generation throughput on real prompts: the vllm backend, the transformers backend
and plain ``model.generate``, side by side in one run on one GPU.

The workload is a rollout's: for ``--questions`` spider-dev questions, the planner prompt with
K=8 samples at T=1.0, then one val-sel and one val-cond critique (T=1.0) of each of the K
candidates that a committed rollout holds for that question (``--candidates``, default the
SFT team's evaluation in ``results/study-spider``), so validator prompts carry real SQL and
real execution previews. Each path gets the same prompts and settings (the agents file's
``max_tokens``), and counts the tokens that rows keep: completion tokens up to and including
the end-of-turn token. Plain ``generate`` pads each batch of ``--batch-size`` rows (in the
given order) and decodes every row until the longest ends, as the path matsql used before
the backends; its kept tokens are counted the same way.

    python benchmarks/bench_generate.py --questions 64 --json out.json           # GPU, all paths
    python benchmarks/bench_generate.py --paths vllm --questions 256             # vLLM alone
    python benchmarks/bench_generate.py --model smollm2-135m-instruct --device cpu \
        --paths transformers,plain --questions 2 --batch-size 8 --k 2 --scale-tokens 0.1  # CPU smoke

Prints new tokens/s per path and stage (planner, validators), and the ratios to plain
``generate``. Every path runs a small warm-up first (vLLM's includes its engine start, which
is reported apart).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

from matsql.backends.vllm_local import EngineSettings
from matsql.evaluate.portable import portable_text

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = ROOT / "results/study-spider/eval-sft/rollout.jsonl.gz"
AGENTS = ROOT / "experiments/agents/qwen0.5b-vllm.yaml"


def workload(n_questions: int, k: int, candidates: Path) -> dict[str, list[Any]]:
    """Real planner and validator prompts: ``{"planner": [...], "validators": [...]}``."""
    from matsql.agents import planner, validator
    from matsql.benchmarks.registry import load_benchmark
    from matsql.rollout.io import read_records

    bench = load_benchmark("spider-dev")
    recs = {r.question_id: r for r in read_records(candidates)}
    qs = [q for q in bench.runnable if q.question_id in recs][:n_questions]
    plan, vals = [], []
    for q in qs:
        schema = bench.schema_text(q.db_id)
        plan.append(planner.build(q, schema))
        for c in recs[q.question_id].candidates[:k]:
            for agent in validator.NAMES:
                vals.append(validator.build(agent, q, schema, c.planner.sql, c.exec))
    return {"planner": plan, "validators": vals}


def budgets(agents: Path, scale: float) -> dict[str, int]:
    from matsql.team import load_team

    team = load_team(agents)
    return {
        "planner": max(1, int(team["planner"].max_tokens * scale)),
        "validators": max(1, int(team["val-sel"].max_tokens * scale)),
    }


def run_backend(backend: Any, work: dict[str, list[Any]], k: int, budget: dict[str, int], seed: int) -> dict:
    """``backend``: one for every stage, or ``{stage: backend}`` (a team's agents, e.g. two
    adapters on one engine)."""
    out = {}
    for stage, prompts in work.items():
        n = k if stage == "planner" else 1
        b = backend[stage] if isinstance(backend, dict) else backend
        b.stats.__init__()
        t0 = time.perf_counter()
        b.generate(prompts, n=n, temperature=1.0, max_tokens=budget[stage], seed=seed)
        dt = time.perf_counter() - t0
        out[stage] = {"seconds": dt, "rows": len(prompts) * n, "new_tokens": b.stats.completion_tokens}
    return out


def run_plain(
    engine: Any, work: dict[str, list[Any]], k: int, budget: dict[str, int], batch: int, seed: int
) -> dict:
    """``model.generate`` over padded batches in the given order (the pre-backend path)."""
    import torch

    from matsql.backends.chat import cut_at_stop_ids

    tok, model = engine.tokenizer, engine.model
    tok.padding_side = "left"
    out = {}
    torch.manual_seed(seed)
    for stage, prompts in work.items():
        n = k if stage == "planner" else 1
        texts = [engine.render(p) for p in prompts]
        per = max(1, batch // n)
        new = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for a in range(0, len(texts), per):
                enc = tok(texts[a : a + per], add_special_tokens=False, padding=True, return_tensors="pt")
                enc = enc.to(engine.device)
                gen = model.generate(
                    **enc,
                    max_new_tokens=budget[stage],
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    num_return_sequences=n,
                    eos_token_id=engine.stop_ids,
                    pad_token_id=engine.stop_ids[0],
                )
                for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                    kept, ended = cut_at_stop_ids(row, engine.stop_ids)
                    new += len(kept) + int(ended)
        if str(engine.device).startswith("cuda"):
            torch.cuda.synchronize()
        out[stage] = {"seconds": time.perf_counter() - t0, "rows": len(texts) * n, "new_tokens": new}
    return out


def random_adapters(model_dir: Path) -> list[str]:
    """Two random rank-8 adapters on all seven projections (vllm_parity.random_adapter)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from vllm_parity import random_adapter

    root = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    return [str(random_adapter(model_dir, root / f"r8-{i}", seed=i)) for i in (1, 2)]


def _release_cuda() -> None:
    """Hand the transformers paths' cached blocks back, so vLLM's memory check sees a free card."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def total(r: dict) -> dict[str, float]:
    s = sum(v["seconds"] for v in r.values())
    t = sum(v["new_tokens"] for v in r.values())
    return {"seconds": s, "new_tokens": t, "new_tokens_per_s": t / s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument(
        "--paths", default="vllm,transformers,plain", help="comma list of vllm, transformers, plain"
    )
    ap.add_argument("--questions", type=int, default=64, help="spider-dev questions (runnable, in order)")
    ap.add_argument("--k", type=int, default=8, help="planner samples per question (= candidates critiqued)")
    ap.add_argument(
        "--candidates", type=Path, default=CANDIDATES, help="a rollout file holding the candidates"
    )
    ap.add_argument("--agents", type=Path, default=AGENTS, help="agents file whose max_tokens the stages use")
    ap.add_argument(
        "--scale-tokens", type=float, default=1.0, help="multiply the agents' max_tokens (smoke runs)"
    )
    ap.add_argument("--batch-size", type=int, default=256, help="rows per batch of the transformers paths")
    ap.add_argument("--device", default="auto", help="transformers paths' device")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.35, help="vLLM's share of the card")
    ap.add_argument(
        "--max-num-seqs",
        type=int,
        default=EngineSettings.max_num_seqs,
        help="vLLM's concurrent sequences (default: the engines' own)",
    )
    ap.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="vLLM's tokens per step (default: vLLM's)"
    )
    ap.add_argument(
        "--max-cudagraph-capture-size", type=int, default=None,
        help="vLLM captures CUDA graphs up to this many sequences (default: vLLM's, 512 here)",
    )  # fmt: skip
    ap.add_argument(
        "--hf-questions",
        type=int,
        default=None,
        help="questions for the transformers paths (default --questions): they decode in fixed "
        "batches of --batch-size rows, so their tokens/s does not grow with the workload, and a "
        "prefix of it measures them in less GPU time",
    )
    ap.add_argument(
        "--lora-mode",
        default="none",
        choices=["none", "request", "swap"],
        help="vLLM path: the planner with one adapter and the validators with another (--adapters), "
        "as LoRARequests (request) or merged into the weights (swap); none: the base model",
    )
    ap.add_argument(
        "--adapters",
        default=None,
        help="PLANNER_DIR,VALIDATOR_DIR for --lora-mode (default: two random rank-8 adapters, "
        "benchmarks/vllm_parity.py's)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if bad := set(paths) - {"vllm", "transformers", "plain"}:
        ap.error(f"unknown paths {sorted(bad)}")

    work = workload(args.questions, args.k, args.candidates)
    budget = budgets(args.agents, args.scale_tokens)
    warm = {s: p[:4] for s, p in work.items()}
    res: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "prompts": {s: len(p) for s, p in work.items()},
        "budget": budget,
    }
    # The transformers paths first, the vLLM engine after: an in-process vLLM engine keeps its
    # share of the card (and its threads) until the process ends, and session 8's plain path,
    # run beside an idle engine holding 80% of the card, measured 35% below session 6's.
    if "transformers" in paths or "plain" in paths:
        from matsql.backends.transformers_local import LocalBackend, LocalEngine

        n_hf = min(args.hf_questions or args.questions, args.questions)
        hf_work = work  # the vLLM path below still runs the whole workload
        if n_hf < args.questions:
            hf_work = workload(n_hf, args.k, args.candidates)
            res["hf_prompts"] = {s: len(p) for s, p in hf_work.items()}

        t0 = time.perf_counter()
        eng = LocalEngine.load(args.model, device=args.device)
        res["transformers_load_s"] = time.perf_counter() - t0
        res["device"] = str(eng.device)
        if "transformers" in paths:
            lb = LocalBackend(eng, batch_size=args.batch_size)
            run_backend(lb, warm, args.k, {s: 8 for s in budget}, args.seed)
            res["transformers"] = run_backend(lb, hf_work, args.k, budget, args.seed)
        if "plain" in paths:
            run_plain(eng, warm, args.k, {s: 8 for s in budget}, args.batch_size, args.seed)
            res["plain"] = run_plain(eng, hf_work, args.k, budget, args.batch_size, args.seed)
        del eng
        gc.collect()
        _release_cuda()
    if "vllm" in paths:
        from matsql.backends.vllm_local import VLLMBackend, VLLMEngine
        from matsql.models import dense_folder, load_tokenizer

        t0 = time.perf_counter()
        folder, digest = dense_folder(args.model)
        settings = EngineSettings(
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_cudagraph_capture_size=args.max_cudagraph_capture_size,
            lora_mode="request" if args.lora_mode == "none" else args.lora_mode,
        )
        engine = VLLMEngine(folder, load_tokenizer(folder), f"{args.model}|{digest[:16]}", settings)
        vb: Any = VLLMBackend(engine)
        if args.lora_mode != "none":
            ads = args.adapters.split(",") if args.adapters else random_adapters(folder)
            res["adapters"] = ads
            vb = {"planner": VLLMBackend(engine, ads[0]), "validators": VLLMBackend(engine, ads[-1])}
        res["lora_mode"] = args.lora_mode
        _ = engine.llm
        res["vllm_start_s"] = time.perf_counter() - t0
        # "0": the engine core in this process (matsql's default, for repeatable seeds)
        res["vllm_multiprocessing"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        run_backend(vb, warm, args.k, {s: 8 for s in budget}, args.seed)
        swaps0, swap_s0 = engine.swaps, engine.swap_seconds  # the warm-up's swaps left out
        res["vllm"] = run_backend(vb, work, args.k, budget, args.seed)
        if args.lora_mode == "swap":  # included in the stages' seconds
            res["swaps"] = {"count": engine.swaps - swaps0, "seconds": engine.swap_seconds - swap_s0}
    try:
        import torch

        if torch.cuda.is_available():
            res["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    print(
        f"{args.model} on {res.get('gpu', res.get('device', '?'))}: {args.questions} spider-dev questions, "
        f"planner K={args.k} ({res['prompts']['planner']} prompts, max {budget['planner']} tokens), "
        f"{res['prompts']['validators']} validator prompts (max {budget['validators']}), T=1.0"
    )
    for p in paths:
        t = res[f"{p}_total"] = total(res[p])
        stages = "; ".join(
            f"{s} {v['new_tokens'] / v['seconds']:,.0f} tok/s ({v['new_tokens']:,} tokens, {v['seconds']:.1f} s)"
            for s, v in res[p].items()
        )
        print(f"  {p:13s} {t['new_tokens_per_s']:9,.0f} kept new tokens/s in all   [{stages}]")
    if "hf_prompts" in res:
        print(f"  transformers paths ran the first {args.hf_questions} questions ({res['hf_prompts']})")
    if "plain" in paths:
        for p in paths:
            if p != "plain":
                r = res[f"{p}_total"]["new_tokens_per_s"] / res["plain_total"]["new_tokens_per_s"]
                res[f"ratio_{p}_over_plain"] = r
                print(f"  ratio {p} / plain generate: {r:.2f}x kept new tokens/s")
    if "vllm_start_s" in res:
        print(f"  vLLM engine start (incl. the bf16 folder check): {res['vllm_start_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(portable_text(json.dumps(res, indent=1)))
    os._exit(0)  # vLLM's engine process would otherwise hold the interpreter at exit


if __name__ == "__main__":
    main()
