#!/usr/bin/env bash
# The GPU benchmarks, each alone on its own card and all at once (about 2 minutes on 4 cards;
# with fewer cards, one after another on the first), from the repository root with scripts/device/env.sh sourced:
#   bash scripts/device/bench.sh OUT_DIR [ADAPTER]
# 1. bench_transformers_paths (once bench_generate), planner-like prompts (reasoning first, 320 new tokens): LocalBackend vs
#    plain generate (issue 3's rollout throughput against the plain-generate baseline), then
#    one batch of each under torch.profiler (OUT_DIR/profile: why LocalBackend's step costs more);
# 2. bench_transformers_paths with a LoRA adapter (default: the study's SFT val-sel), validator-like
#    160 new tokens: the adapter unmerged (PEFT) vs merged into a weight copy;
# 3. bench_transformers_paths as DEVICE.md measured plain generate's peak (512 prompts, 128 new tokens).
set -uo pipefail
out=${1:?usage: bench.sh OUT_DIR [ADAPTER]}
adapter=${2:-runs/study-spider/sft-val-sel}
mkdir -p "$out"
n=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$n" -ge 1 ] || n=1
M=qwen2.5-coder-0.5b-instruct
PLANNER="First explain which tables, columns and conditions answer the question, then write one SQLite query."
jobs=(
  "bench_generate|benchmarks/bench_transformers_paths.py --model $M --questions 256 --batch-size 256 --prompt-tokens 794 --new-tokens 320 --system '$PLANNER' --profile $out/profile"
  "bench_generate_lora|benchmarks/bench_transformers_paths.py --model $M --questions 256 --batch-size 256 --prompt-tokens 794 --new-tokens 160 --baseline no --adapter $adapter"
  "bench_generate_peak|benchmarks/bench_transformers_paths.py --model $M --questions 512 --batch-size 256 --prompt-tokens 794 --new-tokens 128"
)
one() {  # one benchmark on card $1
  local name=${2%%|*} cmd=${2#*|}
  if [ "$name" = bench_generate_lora ] && [ ! -d "$adapter" ]; then
    echo "no adapter $adapter: skipped" > "$out/$name.txt"; return
  fi
  CUDA_VISIBLE_DEVICES=$1 eval "python3 $cmd --json '$out/$name.json'" > "$out/$name.txt" 2>&1
}
for i in "${!jobs[@]}"; do
  if [ "$n" -ge "${#jobs[@]}" ]; then one "$i" "${jobs[$i]}" & else one 0 "${jobs[$i]}"; fi
done
wait
for f in "$out"/*.txt; do echo "== $f"; grep -v "Loading weights" "$f" | tail -n 12; done
