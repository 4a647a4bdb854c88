#!/usr/bin/env bash
# The vLLM checks the next lease owes issue 15 (results/vllm/README.md), in one call after
# `setup.sh join`, from the repository snapshot with scripts/device/env.sh sourced:
#   bash scripts/device/vllm_checks.sh OUT_DIR [STEP ...]   # steps: lora_graphs parity_fp32 parity_fp32_tf32
#     parity_fp32_swap parity_bf16
#     bench512 bench512_s512 bench512_mbt16384 bench512_mbt32768 bench512_mbt65536 bench512_cg2048 lora_modes bench512_mp bench512_mpbi repeat_inproc repeat_mp repeat_mpbi
#     train_liger train lora_request lora_swap served served_eager (default: all)
# A call is limited to 600 s: session 7 sent two calls of two or three steps each.
# 1. LoRA with CUDA graphs on the V1 model runner after a graphs engine without LoRA has warmed the
#    compile cache (session 8: as the first engine it gave no result in 200 s), beside eager LoRA;
# 2. greedy parity in fp32 (kernel rounding out of the way: the base model, and an adapter merged
#    into the weights, since vLLM's LoRA kernels take fp16/bf16 only) and bf16 with a random
#    adapter, texts kept;
# 3. throughput at a rollout call's real size (512 questions, up to 2048 sequences at once), and
#    vLLM alone with its engine core in a second process (bench512_mp), and with batch-invariant
#    kernels too (bench512_mpbi);
# 4. do seeded samples repeat across two processes: engine core in process (matsql's default),
#    in its own process, and in its own process with batch-invariant kernels (repeat_*).
# Session 11 measured lora_modes (swap failed: fixed), lora_request, lora_swap, served and bench512_s512.
# Session 12: bench512 (9.83x) and 13 stages of the committed study on one card (results/vllm/README.md).
# Session 13: bench512 at BENCH512_MBT=65536 (6.76x; 0.82x the default 16,384 alone on the same
# machine, so the default stays) and train_liger (SFT 1.38x with LoRA dropout 0 + Liger's kernels
# + length grouping, peak 31.6 GiB: now the qwen0.5b recipes).
# Next lease with spare minutes: bench512_mbt16384 bench512_cg2048 (CUDA graphs up to 2,048
# sequences), train with ORPO's variants (peak memory: can ORPO share the card?), lora_modes,
# lora_request + served + served_eager (is the served engine's pass@8 gap LoRA under CUDA graphs?).
# Each step has its own time limit, so a hang costs that step only.
set -uo pipefail
out=${1:?usage: vllm_checks.sh OUT_DIR [STEP ...]}
shift
want=" ${*:-lora_graphs parity_fp32 parity_fp32_tf32 parity_fp32_swap parity_bf16 bench512 bench512_s512 bench512_mbt16384 bench512_mbt32768 bench512_mbt65536 bench512_cg2048 lora_modes bench512_mp bench512_mpbi repeat_inproc repeat_mp repeat_mpbi train_liger train lora_request lora_swap served served_eager} "
mkdir -p "$out"
export VLLM_ENABLE_V1_MULTIPROCESSING=0
free_gpu() { nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9; sleep 1; }
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  [[ "$want" == *" $name "* ]] || return 0
  local t0=$SECONDS
  timeout -s ABRT "$limit" python3 -X faulthandler "$@" > "$out/$name.log" 2>&1
  echo "$name: rc $? in $((SECONDS - t0)) s"; free_gpu
}
step lora_graphs 580 benchmarks/vllm_lora_graphs.py --limit 250 --json "$out/lora-graphs.json"
# float32: vLLM's Triton attention multiplies exact float32 (TRITON_F32_DEFAULT=ieee, the script's
# default since session 19); parity_fp32_tf32 is session 8's setting (Triton's TF32 default) on the
# same machine; parity_fp32_swap has an adapter merged into the float32 weights (vLLM's LoRA kernels
# take 16-bit inputs only): PARITY_ADAPTER=PATH (a trained one, e.g. the v2 run's sft-planner), else random
step parity_fp32 300 benchmarks/vllm_parity.py --mode greedy --dtype float32 --adapter none --out "$out/parity_fp32.json"
step parity_fp32_tf32 300 benchmarks/vllm_parity.py --mode greedy --dtype float32 --adapter none --triton-f32 tf32 \
  --out "$out/parity_fp32_tf32.json"
step parity_fp32_swap 300 benchmarks/vllm_parity.py --mode greedy --dtype float32 --adapter "${PARITY_ADAPTER:-random}" \
  --lora-mode swap --out "$out/parity_fp32_swap.json"
step parity_bf16 150 benchmarks/vllm_parity.py --mode greedy --adapter random --out "$out/parity_bf16.json"
# BENCH512_MBT=N runs it at vLLM's max_num_batched_tokens N, BENCH512_CG=N with CUDA graphs captured
# up to N sequences (both recorded in the JSON's args)
step bench512 420 benchmarks/bench_generate.py --questions 512 --max-num-seqs 2048 --gpu-memory-utilization 0.8 \
  ${BENCH512_MBT:+--max-num-batched-tokens $BENCH512_MBT} ${BENCH512_CG:+--max-cudagraph-capture-size $BENCH512_CG} \
  --paths vllm,transformers,plain --hf-questions 64 --json "$out/bench512.json"
# the engine core in its own process (vLLM's default; matsql runs it in process for repeatable
# seeds): what that choice costs, vLLM alone on the same workload
VLLM_ENABLE_V1_MULTIPROCESSING=1 step bench512_mp 200 benchmarks/bench_generate.py --questions 512 \
  --max-num-seqs 2048 --gpu-memory-utilization 0.8 --paths vllm --json "$out/bench512_mp.json"
# at most 512 sequences at once, the largest batch vLLM captures in CUDA graphs here
# (max_cudagraph_capture_size 512 in session 10's log): above it decode steps run without graphs
step bench512_s512 200 benchmarks/bench_generate.py --questions 512 --max-num-seqs 512 \
  --gpu-memory-utilization 0.8 --paths vllm --json "$out/bench512_s512.json"
# vLLM's tokens per scheduler step (max_num_batched_tokens, 16,384 by default here): the validators'
# 8,192 prompts of ~800 tokens are prefill-bound (18,103 kept tokens/s against the planner's 40,682
# in session 12); a larger budget batches more prefill per step. vLLM alone, two settings
for t in 16384 32768 65536; do
  step bench512_mbt$t 200 benchmarks/bench_generate.py --questions 512 --max-num-batched-tokens $t \
    --gpu-memory-utilization 0.8 --paths vllm --json "$out/bench512_mbt$t.json"
done
# CUDA graphs for decode batches up to 2,048 sequences (vLLM captures up to 512 by default, and
# matsql runs up to 2,048 at once): vLLM alone, beside bench512_mbt16384 (the default) in one lease
step bench512_cg2048 240 benchmarks/bench_generate.py --questions 512 --max-cudagraph-capture-size 2048 \
  --gpu-memory-utilization 0.8 --paths vllm --json "$out/bench512_cg2048.json"
# LoRA per request (eager) against LoRA merged into the weights (swap, CUDA graphs) and the base
# model: three engines, one process each, same workload and adapters (benchmarks/bench_lora_modes.py)
step lora_modes 560 benchmarks/bench_lora_modes.py --questions 512 --max-num-seqs 2048 --json "$out/lora-modes.json"
# vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1, Hopper): results independent of what
# else is in the batch, so seeds would repeat with the engine core in its own process too
VLLM_ENABLE_V1_MULTIPROCESSING=1 VLLM_BATCH_INVARIANT=1 step bench512_mpbi 200 benchmarks/bench_generate.py \
  --questions 512 --max-num-seqs 2048 --gpu-memory-utilization 0.8 --paths vllm --json "$out/bench512_mpbi.json"
repeat() {  # repeat NAME ENV=VALUE...: K=8 samples at T=1 with one seed, in two processes; digests compared
  local name=$1 i; shift
  [[ "$want" == *" $name "* ]] || return 0
  for i in 1 2; do
    env "$@" timeout -s ABRT 150 python3 benchmarks/vllm_parity.py --mode sampled --questions 64 --adapter none \
      --out "$out/$name-$i.json" > "$out/$name-$i.log" 2>&1
    echo "$name run $i: rc $?"; free_gpu
  done
  python3 -c "import json; a, b = (json.load(open(f'$out/$name-{i}.json'))['digests'] for i in (1, 2)); print('$name: same samples across processes', a[0] == b[0], '| within each process', a[0] == a[1], b[0] == b[1])"
}
repeat repeat_inproc VLLM_ENABLE_V1_MULTIPROCESSING=0
repeat repeat_mp VLLM_ENABLE_V1_MULTIPROCESSING=1
repeat repeat_mpbi VLLM_ENABLE_V1_MULTIPROCESSING=1 VLLM_BATCH_INVARIANT=1
# SFT: committed (no activation checkpointing since session 10, 16 x 2) and 32 x 1 length-grouped;
# ORPO: committed and 16 x 1. No held-out evaluation (the same for every variant; 10 steps each)
# SFT with Liger's kernels (the loss fused with the LM head) beside today's recipe: s/step and peak GiB
step train_liger 480 benchmarks/bench_train.py --steps 10 --methods sft --variants committed,no-ckpt-liger,no-ckpt-nodrop-liger,no-ckpt-nodrop-bylen-liger \
  --set 'data.eval_sources=[]' --json "$out/train_liger.json" --work /root/matsql/bench-train
# ORPO: the committed recipe and code (LoRA dropout 0, the LM head at completion positions only)
# against every position's logits, and against session 12's ORPO (dropout 0.05 too); peak memory
# decides whether ORPO fits half a card (--gpu-slots 4); no-ckpt-bylen: pairs of similar length
# per batch (33% of random batches' tokens are padding on v2's pairs: results/vllm/s19)
step train 540 benchmarks/bench_train.py --steps 10 --methods orpo --variants committed,all-logits,before-s13,no-ckpt-bylen \
  --set 'data.eval_sources=[]' --json "$out/train.json" --work /root/matsql/bench-train
# 5. LoRA three ways, two planner stages each as a plan runs them (512 spider-dev questions, K=8,
#    each stage with its own random adapter): in process with a LoRARequest per call (eager), in
#    process with the adapter merged into the weights (lora_mode: swap, CUDA graphs), and against
#    one server started once (serve.sh, adapters loaded at run time): wall time per stage process
lora_stages() {  # lora_stages STEP AGENTS [serve]: two planner stages, each with its own random adapter
  local name=$1 agents=$2 t0 i
  [[ "$want" == *" $name "* ]] || return 0
  [[ -d /root/matsql/served-lora/r8-2 ]] || python3 -c "
import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks')
from vllm_parity import random_adapter; from matsql.models.loading import dense_folder
f = dense_folder('qwen2.5-coder-0.5b-instruct')[0]
for i in (1, 2): random_adapter(f, Path('/root/matsql/served-lora/r8-%d' % i), seed=i)
" > "$out/lora-adapters.log" 2>&1 || { echo "$name: adapters failed"; return 0; }
  if [[ ${3:-} == serve ]]; then
    t0=$SECONDS
    timeout 300 bash scripts/device/serve.sh start 0.8 > "$out/$name-start.log" 2>&1
    echo "$name: server start rc $? in $((SECONDS - t0)) s"
  fi
  for i in 1 2; do
    t0=$SECONDS
    timeout 240 python3 -m matsql.cli rollout --benchmark spider-dev --agents "$agents" \
      --adapter planner=/root/matsql/served-lora/r8-$i --k 8 --greedy-first --temperature 1.0 \
      --batch-questions 256 --gate never --validators "" --limit 512 --ex spider \
      --out "$out/$name-$i.jsonl" > "$out/$name-$i.log" 2>&1
    echo "$name: stage $i rc $? in $((SECONDS - t0)) s"
  done
  [[ ${3:-} == serve ]] && bash scripts/device/serve.sh stop
  free_gpu
  gzip -f "$out/$name"-*.jsonl 2>/dev/null || true
}
lora_stages lora_request experiments/agents/qwen0.5b-vllm.yaml
lora_stages lora_swap experiments/agents/qwen0.5b-vllm-swap.yaml
lora_stages served experiments/agents/qwen0.5b-served.yaml serve
# the served engine without CUDA graphs: if its pass@8 then matches per request's, the gap was LoRA
# under CUDA graphs, not serving (session 11)
SERVE_EAGER=1 lora_stages served_eager experiments/agents/qwen0.5b-served.yaml serve
for sv in served served_eager; do
  [[ "$want" == *" $sv "* && -f "$out/$sv-1.jsonl.gz" && -f "$out/lora_request-1.jsonl.gz" ]] && python3 scripts/device/pass_agreement.py \
    request=$out/lora_request-1.jsonl.gz,$out/lora_request-2.jsonl.gz $sv=$out/$sv-1.jsonl.gz,$out/$sv-2.jsonl.gz | tee "$out/pass-agreement-$sv.txt"
done
for f in "$out"/*.log; do echo "== $f"; grep -E "^(lora|base|greedy|sampled|sft|orpo|  )|Error|rc " "$f" | tail -n 8; done
