"""Rollout-style generation throughput of LocalBackend vs plain ``model.generate``, and the
per-step cost of the keyed sampler in isolation (the transformers backend's own paths: merged
vs unmerged LoRA, random weights, a profile). Sessions 2-5 measured with this script, under
its old name ``bench_generate.py``; that name now times the vllm backend against these paths
on real spider-dev prompts. Until issue 15 the script also timed LocalBackend's decode rounds
against one round per batch (``local_one_round``, ``--round-tokens``, ``--one-round``); the
rounds were deleted with the rest of the GPU-only machinery (run it from commit 7ba0163 to
repeat those rows).

Builds ``--questions`` synthetic schema-style prompts whose lengths spread around
``--prompt-tokens`` (real schema prompts vary, which is where padding waste comes from), then
times LocalBackend (length-sorted batches, keyed sampling) and, as the baseline, plain
``model.generate`` over the same prompts in their given order with the same batch size. All
count generated tokens up to and including the end token. Prints questions/s, new tokens/s,
decode steps, the share of row-steps that produced a kept token, and the ratios to the
baseline. Every path first runs once on a full-size batch (2 new tokens), so allocator and
kernel warm-up does not land on whichever path is timed first.

The sampler part times one decode step's token choice for ``--batch-size`` rows over the
model's vocabulary on the model's device: the keyed inverse-CDF sampler (``sampling.py``), the
keyed Gumbel-max sampler it replaced (int64 hash per vocabulary entry, kept here as the
"before"), ``softmax`` + ``torch.multinomial`` (what ``generate(do_sample=True)`` runs) and
``argmax`` (greedy, the floor), with the number of GPU kernels (CPU: aten ops) per call.

``--system`` sets the instruction; the default asks for bare SQL (short answers); a planner-like
instruction that asks for reasoning first gives long, uneven completions.

Reference (DEVICE.md, H100, Qwen2.5-Coder-0.5B bf16, plain generate, T=1, 128 new tokens):
7,105 new tokens/s at batch 512 with 794-token prompts.

    python benchmarks/bench_transformers_paths.py --model qwen2.5-coder-0.5b-instruct --questions 512 \
        --batch-size 256 --prompt-tokens 794 --new-tokens 128 --json out.json      # GPU, as before
    python benchmarks/bench_transformers_paths.py --model qwen2.5-coder-0.5b-instruct --questions 512 \
        --batch-size 256 --prompt-tokens 794 --new-tokens 320 --system "First explain which \
        tables, columns and conditions answer the question, then write one SQLite query."  # planner-like
    python benchmarks/bench_transformers_paths.py --model qwen2.5-coder-0.5b-instruct --sampler-only  # sampler alone
    python benchmarks/bench_transformers_paths.py --model qwen2.5-coder-0.5b-instruct --questions 256 \
        --new-tokens 160 --adapter runs/study-spider/sft-val-sel   # LoRA: unmerged vs merged copy
    python benchmarks/bench_transformers_paths.py --model smollm2-135m-instruct --device cpu --baseline yes \
        --questions 16 --batch-size 8 --prompt-tokens 96 --new-tokens 16  # CPU smoke check
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

REFERENCE = {"new_tokens_per_s": 7105, "batch": 512, "prompt_tokens": 794, "device": "H100, plain generate"}

TYPES = ("INTEGER", "TEXT", "REAL", "DATE")
SYSTEM = "Write one SQLite query."
PATHS = ("local_backend", "plain_generate", "lora_unmerged", "lora_merged")


def synthetic_prompts(
    tokenizer: Any, count: int, target: int, spread: float, seed: int, system: str = SYSTEM
) -> list[Any]:
    """Schema + question chat prompts, each padded with CREATE TABLE lines to a drawn length."""
    from matsql.backends.base import ChatPrompt
    from matsql.backends.chat import encode_rendered, render_chat

    rng = random.Random(seed)
    prompts = []
    for q in range(count):
        want = max(16, round(target * rng.uniform(1 - spread, 1 + spread)))
        lines: list[str] = []
        question = f"Question {q}: how many rows of t{q % 7} have c1 above {rng.randint(1, 99)}?"
        while True:
            p = ChatPrompt.of(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "\n".join([*lines, question])},
                ]
            )
            n = len(encode_rendered(tokenizer, [render_chat(tokenizer, p)])[0])
            if n >= want:
                break
            cols = ", ".join(f"c{j} {rng.choice(TYPES)}" for j in range(rng.randint(2, 6)))
            lines.append(f"CREATE TABLE t{len(lines)} (id INTEGER PRIMARY KEY, {cols});")
        prompts.append(p)
    return prompts


def synchronize(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_backend(
    backend: Any, prompts: list[Any], args: argparse.Namespace, max_tokens: int
) -> dict[str, float]:
    backend.stats.__init__()
    t0 = time.perf_counter()
    backend.generate(prompts, n=args.n, temperature=args.temperature, max_tokens=max_tokens, seed=args.seed)
    dt = time.perf_counter() - t0
    s = backend.stats
    return summarize(
        dt,
        len(prompts),
        s.completion_tokens,
        s.extra.get("padded_prompt_tokens", 0),
        s.extra.get("decode_steps", 0),
        s.extra.get("row_steps", 0),
    ) | {"batches": s.extra.get("batches", 0)}


def run_plain(engine: Any, prompts: list[Any], args: argparse.Namespace, max_tokens: int) -> dict[str, float]:
    """The baseline: tokenizer padding + ``model.generate(do_sample=...)`` per batch in the given order."""
    import torch

    from matsql.backends.chat import cut_at_stop_ids

    tok, model = engine.tokenizer, engine.model
    tok.padding_side = "left"
    texts = [engine.render(p) for p in prompts]
    sample = args.temperature > 0
    new = padded = steps = row_steps = 0
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, len(texts), args.batch_size):
            enc = tok(
                texts[a : a + args.batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(engine.device)
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=args.temperature if sample else None,
                top_p=1.0,
                top_k=0,
                num_return_sequences=args.n,
                eos_token_id=engine.stop_ids,
                pad_token_id=engine.stop_ids[0],
            )
            width = enc["input_ids"].shape[1]
            padded += enc["input_ids"].numel()
            steps += out.shape[1] - width
            row_steps += out.shape[0] * (out.shape[1] - width)
            for row in out[:, width:].tolist():
                kept, ended = cut_at_stop_ids(row, engine.stop_ids)
                new += len(kept) + int(ended)
    synchronize(engine.device)
    return summarize(time.perf_counter() - t0, len(texts), new, padded, steps, row_steps)


def summarize(
    seconds: float, questions: int, new: float, padded: float, steps: float, row_steps: float
) -> dict[str, float]:
    return {
        "seconds": seconds,
        "questions_per_s": questions / seconds,
        "new_tokens_per_s": new / seconds,
        "new_tokens": new,
        "padded_prompt_tokens": padded,
        "decode_steps": steps,
        "ms_per_decode_step": 1e3 * seconds / max(steps, 1),
        "useful_row_steps": new / max(row_steps, 1),
    }


# ------------------------------------------------------------------ the sampler in isolation


def legacy_gumbel_sampler(
    keys: list[int], temperature: float, chunk_rows: int = 64
) -> Callable[[Any, int], Any]:
    """The keyed sampler before inverse CDF (matsql 0.1, commit 26eb7aa): Gumbel-max with a
    SplitMix64 hash per (row, step, vocabulary entry), int64 on the device, 64 rows a chunk."""
    import torch

    def signed(x: int) -> int:
        return x - (1 << 64) if x >= 1 << 63 else x

    golden, mix1, mix2 = signed(0x9E3779B97F4A7C15), signed(0xBF58476D1CE4E5B9), signed(0x94D049BB133111EB)

    def srl(x: Any, k: int) -> Any:
        return (x >> k) & ((1 << (64 - k)) - 1)

    key_t = torch.tensor([k & ((1 << 63) - 1) for k in keys], dtype=torch.int64)

    def step_fn(scores: Any, step: int) -> Any:
        nonlocal key_t
        key_t = key_t.to(scores.device)
        vocab = scores.shape[1]
        out = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
        for a in range(0, scores.shape[0], chunk_rows):
            b = min(a + chunk_rows, scores.shape[0])
            counter = torch.arange(vocab, device=scores.device, dtype=torch.int64) + step * vocab
            z = key_t[a:b, None] + counter[None, :] * golden
            z = (z ^ srl(z, 30)) * mix1
            z = (z ^ srl(z, 27)) * mix2
            z = z ^ srl(z, 31)
            u = (srl(z, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
            out[a:b] = scores[a:b].float() / temperature - torch.log(-torch.log(u))
        return out.argmax(-1)

    return step_fn


def time_call(fn: Callable[[], Any], device: Any, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call, synchronizing the device around each."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_launches(fn: Callable[[], Any], device: Any) -> int | None:
    """GPU kernels launched by ``fn()`` (on CPU: top-level aten ops); None if the profiler fails."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = str(device).startswith("cuda")
    try:
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            fn()
            synchronize(device)
    except Exception:  # a missing CUPTI must not sink the benchmark
        return None
    events = prof.events()
    if cuda:
        return sum(1 for e in events if e.device_type == DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::") and e.cpu_parent is None)


def bench_sampler(rows: int, vocab: int, temperature: float, device: Any, repeats: int) -> dict[str, Any]:
    """Per-step cost of choosing ``rows`` tokens over ``vocab`` logits, each way."""
    import torch

    from matsql.backends.sampling import KeyedSampler

    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=gen) * 3).to(device)
    keys = list(range(1, rows + 1))
    keyed = KeyedSampler(keys, temperature, 1.0, start_len=0, steps=8)
    legacy = legacy_gumbel_sampler(keys, temperature)
    ways: dict[str, Callable[[], Any]] = {
        "keyed_inverse_cdf": lambda: keyed.sample(logits, 3),
        "keyed_gumbel_legacy": lambda: legacy(logits, 3),
        "softmax_multinomial": lambda: torch.multinomial(torch.softmax(logits / temperature, -1), 1),
        "argmax": lambda: logits.argmax(-1),
    }
    out: dict[str, Any] = {"rows": rows, "vocab": vocab, "device": str(device)}
    for name, fn in ways.items():
        out[name] = {"ms": 1e3 * time_call(fn, device, repeats), "launches": count_launches(fn, device)}
    return out


def print_sampler(res: dict[str, Any]) -> None:
    base = res["softmax_multinomial"]["ms"]
    unit = "GPU kernels" if res["device"].startswith("cuda") else "aten ops"
    print(f"sampler, one decode step of {res['rows']} rows x {res['vocab']} vocabulary on {res['device']}:")
    for name in ("keyed_inverse_cdf", "keyed_gumbel_legacy", "softmax_multinomial", "argmax"):
        r = res[name]
        print(
            f"  {name:20s} {r['ms']:9.2f} ms  ({r['ms'] / base:5.2f}x multinomial)  "
            f"{r['launches'] if r['launches'] is not None else '?'} {unit}"
        )


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--questions", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-batch-tokens", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=794)
    ap.add_argument("--spread", type=float, default=0.5, help="prompt lengths uniform in L*(1 +- spread)")
    ap.add_argument("--system", default=SYSTEM, help="system instruction of the synthetic prompts")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--n", type=int, default=1, help="samples per question")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each; the median is reported")
    ap.add_argument("--baseline", choices=("auto", "yes", "no"), default="auto", help="auto: only on CUDA")
    ap.add_argument("--sampler-only", action="store_true", help="time the sampler alone, no generation")
    ap.add_argument("--sampler-repeats", type=int, default=None, help="default: 20 on CUDA, 3 on CPU")
    ap.add_argument(
        "--adapter",
        default=None,
        help="a LoRA adapter folder: also time LocalBackend with it unmerged (PEFT) and merged into a "
        "weight copy (what MATSQL_MERGE_ADAPTERS=1 does), side by side",
    )
    ap.add_argument(
        "--profile",
        default=None,
        help="a folder: after timing, profile one batch (32 new tokens) of each path with torch.profiler "
        "and write the top operators by self time per path (why one path's decode step costs more)",
    )
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="--model is a folder with config.json and tokenizer files only: build the model with "
        "random weights (bf16 on a GPU). Times are per decode step and every row runs the whole "
        "budget, so this measures the paths without shipping the weights",
    )
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    from matsql.backends.transformers_local import LocalBackend, LocalEngine

    t0 = time.perf_counter()
    if args.random_weights:
        engine = random_engine(args.model, args.device, args.dtype)
    else:
        engine = LocalEngine.load(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    dev = str(engine.device)
    cuda = dev.startswith("cuda")
    res: dict[str, Any] = {"args": vars(args), "device": dev, "load_s": load_s, "model": engine.identifier}
    if cuda:
        import torch

        res["gpu"] = torch.cuda.get_device_name()
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    reps = args.sampler_repeats or (20 if cuda else 3)
    res["sampler"] = bench_sampler(args.batch_size, vocab, args.temperature or 1.0, engine.device, reps)
    print_sampler(res["sampler"])
    if args.sampler_only:
        dump(res, args.json)
        return

    prompts = synthetic_prompts(
        engine.tokenizer, args.questions, args.prompt_tokens, args.spread, args.seed, args.system
    )
    backend = LocalBackend(engine, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens)
    runners: dict[str, Callable[[list[Any], int], dict[str, float]]] = {
        "local_backend": lambda ps, m: run_backend(backend, ps, args, m)
    }
    if args.baseline == "yes" or (args.baseline == "auto" and cuda):
        runners["plain_generate"] = lambda ps, m: run_plain(engine, ps, args, m)
    if args.adapter:
        import copy

        # separate engines: an unmerged adapter wraps its engine's model, which the baseline uses
        unmerged = LocalEngine(copy.deepcopy(engine.model), engine.tokenizer, merge_adapters=False)
        merged = LocalEngine(engine.model, engine.tokenizer, merge_adapters=True)
        for name, eng in (("lora_unmerged", unmerged), ("lora_merged", merged)):
            b = LocalBackend(
                eng,
                adapter=args.adapter,
                batch_size=args.batch_size,
                max_batch_tokens=args.max_batch_tokens,
            )
            runners[name] = lambda ps, m, b=b: run_backend(b, ps, args, m)
    for run in runners.values():  # warm-up: one full-size batch per path, 2 new tokens
        run(prompts[: args.batch_size], 2)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
        for name, run in runners.items():
            runs[name].append(run(prompts, args.new_tokens))
    if args.profile:
        res["profile"] = profile_paths(runners, prompts[: args.batch_size], args.profile, cuda)
    for name, rs in runs.items():  # the median run by wall time
        res[name] = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
    if "local_backend" in res and "plain_generate" in res:
        res["ratio_local_backend_new_tokens_per_s"] = (
            res["local_backend"]["new_tokens_per_s"] / res["plain_generate"]["new_tokens_per_s"]
        )
    if "lora_unmerged" in res:
        res["ratio_lora_merged_over_unmerged_new_tokens_per_s"] = (
            res["lora_merged"]["new_tokens_per_s"] / res["lora_unmerged"]["new_tokens_per_s"]
        )
    res["reference"] = REFERENCE
    print(
        f"model {engine.identifier} on {res.get('gpu', dev)} (loaded in {load_s:.1f}s); {args.questions} questions x n={args.n}, "
        f"~{args.prompt_tokens} prompt tokens (+-{args.spread:.0%}), {args.new_tokens} new, T={args.temperature}, "
        f"batch {args.batch_size}, median of {args.repeats} runs"
    )
    for name in PATHS:
        if name in res:
            r = res[name]
            print(
                f"  {name:16s} {r['questions_per_s']:8.2f} questions/s {r['new_tokens_per_s']:9.1f} new tokens/s  "
                f"({r['new_tokens']:.0f} tokens in {r['seconds']:.1f}s; {r['decode_steps']:.0f} decode steps, "
                f"{r['ms_per_decode_step']:.1f} ms each incl. prefill; {r['useful_row_steps']:.0%} of row-steps kept; "
                f"{r['padded_prompt_tokens']:.0f} padded prompt tokens)"
            )
    if "ratio_local_backend_new_tokens_per_s" in res:
        print(
            f"  ratio local_backend / plain generate: {res['ratio_local_backend_new_tokens_per_s']:.2f}x new tokens/s"
        )
    if "ratio_lora_merged_over_unmerged_new_tokens_per_s" in res:
        print(
            "  ratio lora_merged / lora_unmerged: "
            f"{res['ratio_lora_merged_over_unmerged_new_tokens_per_s']:.2f}x new tokens/s (adapter {args.adapter})"
        )
    print(
        f"  reference: {REFERENCE['new_tokens_per_s']:,} new tokens/s ({REFERENCE['device']}, batch {REFERENCE['batch']}, "
        f"{REFERENCE['prompt_tokens']}-token prompts)"
    )
    dump(res, args.json)


def random_engine(folder: str, device: str, dtype: str) -> Any:
    """A LocalEngine over a randomly initialised model of ``folder``'s config and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from matsql.backends.transformers_local import LocalEngine
    from matsql.models import resolve_device, resolve_dtype

    dev = resolve_device(device)
    cfg = AutoConfig.from_pretrained(folder)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype, dev)).to(dev).eval()
    return LocalEngine.for_inference(
        model, AutoTokenizer.from_pretrained(folder), identifier=f"random:{folder}"
    )


def profile_paths(
    runners: dict[str, Callable[[list[Any], int], dict[str, float]]],
    prompts: list[Any],
    folder: str,
    cuda: bool,
) -> dict[str, str]:
    """One batch of each path under torch.profiler: top operators by self device (or CPU) time,
    and how many operator calls and kernel launches a decode step makes, one table per path."""
    import os

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    os.makedirs(folder, exist_ok=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out = {}
    for name, run in runners.items():
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            r = run(prompts, 32)
        wall = time.perf_counter() - t0
        events = prof.key_averages()
        calls = sum(e.count for e in events)
        # kernels only: an operator's self device time repeats the time of the kernels it launched
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6 if cuda else None
        head = (
            f"{name}: one batch of {len(prompts)} prompts, 32 new tokens, {r['decode_steps']:.0f} decode steps; "
            f"{calls} operator calls; wall {wall:.2f} s under the profiler"
            + (f"; device busy {busy:.2f} s (kernels' self time)" if busy is not None else "")
        )
        tables = [events.table(sort_by=key, row_limit=30)]
        if cuda:  # host side too: a step can be bound by launches and syncs rather than kernels
            tables.append(events.table(sort_by="self_cpu_time_total", row_limit=30))
        path = os.path.join(folder, f"profile_{name}.txt")
        with open(path, "w") as fh:
            fh.write(head + "\n" + "\n".join(tables) + "\n")
        out[name] = path
        print(f"  profile {head} -> {path}")
    return out


def dump(res: dict[str, Any], path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
