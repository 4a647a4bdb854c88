#!/usr/bin/env bash
# Run a plan detached on the lent GPU so that it outlives the 10-minute limit of one device call
# (the machine stays while calls keep coming), and move its run folder between machines.
#   bash scripts/device/study.sh start PLAN [experiment-run options]  # returns at once
#   bash scripts/device/study.sh wait SECONDS      # follow until the plan ends or SECONDS pass, then
#                                                  # ship newly finished stages to $OUT (ship.py)
#   bash scripts/device/study.sh pack RUN_DIR DEST # RUN_DIR as parts of <=15 MiB (no checkpoints,
#                                                  # no SFT datasets, adapters in bf16)
#   bash scripts/device/study.sh unpack DIR        # join DIR/run.tgz.* into the copy's runs/
# The tree is copied to $MATSQL_STATE/repo first: later calls replace the working tree, the
# running job keeps its own copy. Set BENCH=1 to run benchmarks/bench_decode_attention.py and
# bench_generate.py beside it on the last GPU (their files come back as bench.tgz with each poll).
set -euo pipefail
STATE=${MATSQL_STATE:-/root/matsql}
REPO=$STATE/repo
case "$1" in
  start)
    shift
    mkdir -p "$REPO"
    rm -rf "$REPO/src" "$REPO/experiments" "$REPO/recipes" "$REPO/scripts" "$REPO/benchmarks"
    cp -r src experiments recipes scripts benchmarks pyproject.toml "$REPO/"
    rm -f "$STATE/job.rc"
    printf '%q ' "$@" > "$STATE/job.args"
    setsid nohup bash -c '
      cd "'"$REPO"'" && source scripts/device/env.sh
      if [ "${BENCH:-0}" = 1 ]; then   # benchmarks beside the plan, on the last GPU
        mkdir -p "'"$STATE"'/bench"
        ( export CUDA_VISIBLE_DEVICES=$(( $(nvidia-smi -L | wc -l) - 1 ))
          python3 benchmarks/bench_decode_attention.py --model qwen2.5-coder-0.5b-instruct \
            --batch 256 --prompt-tokens 1000 --steps 32 --repeats 3 \
            --json "'"$STATE"'/bench/bench_decode_attention.json" > "'"$STATE"'/bench/bench_decode_attention.txt" 2>&1
          python3 benchmarks/bench_generate.py --model qwen2.5-coder-0.5b-instruct --questions 256 \
            --batch-size 256 --prompt-tokens 794 --new-tokens 320 --repeats 1 \
            --system "First explain which tables, columns and conditions answer the question, then write one SQLite query." \
            --json "'"$STATE"'/bench/bench_generate.json" > "'"$STATE"'/bench/bench_generate.txt" 2>&1 ) &
      fi
      eval "python3 -m matsql.cli experiment run $(cat "'"$STATE"'/job.args")"
      echo $? > "'"$STATE"'/job.rc"' > "$STATE/job.log" 2>&1 < /dev/null &
    echo "started pid $!; log $STATE/job.log"
    ;;
  wait)
    end=$(( $(date +%s) + $2 ))
    while [ ! -f "$STATE/job.rc" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
    grep -v '━' "$STATE/job.log" | tail -n 40 || true
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
    [ -f "$STATE/job.rc" ] && echo "job exit code $(cat "$STATE/job.rc")" || echo "job still running"
    # the machine can go back at any moment: every poll brings finished stages home
    files=8; mkdir -p "${OUT:-$STATE/outbox}"
    if [ -d "$STATE/bench" ]; then tar -C "$STATE" -czf "${OUT:-$STATE/outbox}/bench.tgz" bench && files=7; fi
    for r in "$REPO"/runs/*/; do
      [ -d "$r/manifests" ] && python3 "$REPO/scripts/device/ship.py" "$r" "${OUT:-$STATE/outbox}" --max-files $files || true
    done
    ;;
  pack)
    run=$2 dest=$3
    mkdir -p "$dest"
    python3 "$(dirname "$0")/ship.py" "$run" --cast-only
    tar -C "$(dirname "$run")" --exclude='checkpoint-*' --exclude='sft-data/*/*' --exclude='*.pt' \
      -czf - "$(basename "$run")" | split -b 15m -d - "$dest/run.tgz."
    ls -la "$dest"
    ;;
  unpack)
    mkdir -p "$REPO/runs"
    cat "$2"/run.tgz.* | tar -C "$REPO/runs" -xzf -
    ls "$REPO/runs"/*
    ;;
  *) echo "usage: study.sh start|wait|pack|unpack ..." >&2; exit 2 ;;
esac
