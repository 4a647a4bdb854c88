#!/usr/bin/env bash
# The rest of a lease as one detached job (session 13's pattern), started by the call that ran
# `setup.sh join`, from the unpacked repository snapshot:
#   bash scripts/device/chain.sh start CHECKS_OUT "CHECK STEPS" RULE PLAN [experiment-run options]
# runs `vllm_checks.sh CHECKS_OUT CHECK STEPS` (steps in that script's order), then sources RULE
# (a file in the snapshot; it may set SLOTS, default 2, from what the checks wrote), then
# `study.sh start PLAN --gpu-slots $SLOTS [options]`. Its log: $MATSQL_STATE/chain.log. Poll
# with `sleep N` calls (the machine goes back 30 s after a call ends), then `study.sh wait`.
set -euo pipefail
STATE=${MATSQL_STATE:-/root/matsql}
case "${1:-}" in
  start)
    out=${2:?usage: chain.sh start CHECKS_OUT "STEPS" RULE PLAN [options]} steps=$3 rule=$4
    shift 4
    [ -f "$rule" ] || { echo "chain: no rule file $rule" >&2; exit 2; }
    printf '%q ' "$@" > "$STATE/chain.args"
    setsid nohup bash -c '
      set -u
      export CHECKS_OUT="'"$out"'"
      [ -n "'"$steps"'" ] && bash scripts/device/vllm_checks.sh "'"$out"'" '"$steps"'
      SLOTS=2
      . "'"$rule"'"
      echo "chain: study with --gpu-slots $SLOTS"
      eval "bash scripts/device/study.sh start $(cat "'"$STATE"'/chain.args") --gpu-slots $SLOTS"
    ' > "$STATE/chain.log" 2>&1 < /dev/null &
    echo "chain started (pid $!); log $STATE/chain.log"
    ;;
  *) echo "usage: chain.sh start CHECKS_OUT \"STEPS\" RULE PLAN [options]" >&2; exit 2 ;;
esac
