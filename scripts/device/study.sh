#!/usr/bin/env bash
# Run a plan detached on the lent GPU so that it outlives the 10-minute limit of one device call
# (the machine stays while calls keep coming), and move its run folder between machines.
#   bash scripts/device/study.sh start PLAN [experiment-run options]  # returns at once
#   bash scripts/device/study.sh wait SECONDS      # follow until the plan ends or SECONDS pass, then
#                                                  # ship newly finished stages to $OUT (ship.py)
#   bash scripts/device/study.sh final             # the lease's last call: ship what is done, and
#                                                  # the shard files of unfinished rollouts
#                                                  # (partial.tgz: they resume on the next machine)
#   bash scripts/device/study.sh pack RUN_DIR DEST [STAGE ...]
#                                                  # RUN_DIR (or only these stages: outputs,
#                                                  # manifests, logs) as parts of <=15 MiB, or
#                                                  # PART_MB (58 beside a sparse tree: scripts/device/README.md) (no
#                                                  # checkpoints, no SFT dataset already trained on, adapters in bf16,
#                                                  # identical files stored once)
#   bash scripts/device/study.sh unpack DIR        # join DIR/run.tgz.* into the copy's runs/
# The tree is copied to $MATSQL_STATE/repo first: later calls replace the working tree, the
# running job keeps its own copy. BENCH=1 first runs the benchmarks alone, one per GPU at once
# (scripts/device/bench.sh, about 2 minutes), then the plan; their files come back as
# bench.tgz with each poll. SERVED=1 starts one `vllm serve` before the plan (scripts/device/serve.sh,
# SERVED_FRACTION of the card, default 0.45) and runs it with
# experiments/agents/qwen0.5b-served.yaml (adapters loaded at run time): one engine start for the
# lease instead of one per generation stage; the server stops when the plan ends.
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
      if [ "${BENCH:-0}" = 1 ]; then   # benchmarks first, alone on the cards
        bash scripts/device/bench.sh "'"$STATE"'/bench" || true
      fi
      agents=""
      if [ "${SERVED:-0}" = 1 ]; then   # one engine for the whole plan
        bash scripts/device/serve.sh start "${SERVED_FRACTION:-0.45}" || { echo 1 > "'"$STATE"'/job.rc"; exit 1; }
        agents="--set vars.agents=experiments/agents/qwen0.5b-served.yaml"
      fi
      eval "python3 -m matsql.cli experiment run $(cat "'"$STATE"'/job.args") $agents"
      rc=$?
      [ "${SERVED:-0}" = 1 ] && bash scripts/device/serve.sh stop
      echo $rc > "'"$STATE"'/job.rc"' > "$STATE/job.log" 2>&1 < /dev/null &
    echo "started pid $!; log $STATE/job.log"
    ;;
  wait)
    end=$(( $(date +%s) + $2 ))
    while [ ! -f "$STATE/job.rc" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
    grep -v '━' "$STATE/job.log" | tail -n 40 || true
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
    [ -f "$STATE/job.rc" ] && echo "job exit code $(cat "$STATE/job.rc")" || echo "job still running"
    # the machine can go back at any moment: every poll brings finished stages home
    # a call returns at most 8 files; a file over that is dropped although ship.py counts its
    # stage as shipped (session 12 lost sft-fixer that way): `final` keeps one for partial.tgz
    files=${SHIP_FILES:-8}; mkdir -p "${OUT:-$STATE/outbox}"
    if [ -d "$STATE/bench" ]; then tar -C "$STATE" -czf "${OUT:-$STATE/outbox}/bench.tgz" bench && files=$((files - 1)); fi
    for r in "$REPO"/runs/*/; do
      [ -d "$r/manifests" ] && python3 "$REPO/scripts/device/ship.py" "$r" "${OUT:-$STATE/outbox}" --max-files $files || true
    done
    ;;
  final)
    SHIP_FILES=7 bash "$0" wait 0
    mkdir -p "${OUT:-$STATE/outbox}"
    (cd "$REPO/runs" && ls -d */*.shard[0-9]* */*/*.shard[0-9]* 2>/dev/null | tar -czf "${OUT:-$STATE/outbox}/partial.tgz" -T - \
      && echo "partial shards: $(tar -tzf "${OUT:-$STATE/outbox}/partial.tgz" | wc -l) file(s)") || true
    ;;
  pack)
    run=${2%/} dest=$3; shift 3
    mkdir -p "$dest"
    python3 "$(dirname "$0")/ship.py" "$run" --cast-only
    python3 "$(dirname "$0")/ship.py" "$run" --dedupe  # identical files (tokenizers) as hard links
    name=$(basename "$run") paths=("$name")
    if [ $# -gt 0 ]; then
      paths=()
      for s in "$@"; do
        rel=$(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["out"]; print(o.split("/"+sys.argv[2]+"/",1)[1])' \
          "$run/manifests/$s.json" "$name")
        paths+=("$name/manifests/$s.json" "$name/$rel")
        [ -f "$run/logs/$s.log" ] && paths+=("$name/logs/$s.log")
      done
    fi
    # SFT datasets go only while a training stage still has to read them (v2's sft-selector)
    spent=()
    while read -r a; do [ -n "$a" ] && spent+=(--exclude="sft-data/$a/*"); done \
      < <(python3 "$(dirname "$0")/ship.py" "$run" --spent-sft-data)
    tar -C "$(dirname "$run")" --exclude='checkpoint-*' --exclude='sft-data/*.jsonl' "${spent[@]}" \
      --exclude='*.pt' -czf - "${paths[@]}" | split -b "${PART_MB:-15}m" -d - "$dest/run.tgz."
    ls -la "$dest"
    ;;
  unpack)
    mkdir -p "$REPO/runs"
    cat "$2"/run.tgz.* | tar -C "$REPO/runs" -xzf -
    # what came from here need not be shipped back: list its stages as shipped
    cat "$2"/run.tgz.* | tar -tzf - | sed -n 's#^\([^/]*\)/manifests/\(.*\)\.json$#\1 \2#p' |
      while read -r plan stage; do echo "$stage" >> "$REPO/runs/$plan/.shipped"; done
    ls "$REPO/runs"/*
    ;;
  *) echo "usage: study.sh start|wait|final|pack|unpack ..." >&2; exit 2 ;;
esac
