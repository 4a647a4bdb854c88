#!/usr/bin/env bash
# Lease 3 of study-spider-v2 as one detached job: the ORPO learning-rate check, its rule, then
# the plan (results/study-spider-v2/PLAN.md, "Lease 3"). From the unpacked snapshot, after
# `study.sh unpack`, in the call that ran `setup.sh join`:
#   bash scripts/device/orpo_lr_check.sh start PLAN LR [experiment-run options]
# 1. copies the plan's run folder to $MATSQL_STATE/lrcheck (outside runs/, so the polls do not
#    ship it) without the iter1 val-sel ORPO runs and picks,
#    and reruns those four there at learning rate LR (`--set vars.orpo_extra=...`, both arms);
# 2. applies scripts/device/orpo_lr_rule.py (written before the run): adopt LR iff the picks'
#    mean balanced accuracy over the arms rises by 0.01 or more; the decision goes to
#    $MATSQL_STATE/lr-decision.json, and if adopted the four stages move into the run folder;
# 3. `study.sh start PLAN [options]`, with the override if adopted.
# The card's memory decides how the runners share it (rules/card_slots.sh): on an H100
# --gpu-slots 2 with training on the whole card; on a card of 120 GiB or more --gpu-slots 4 with
# training on half of it, and then BESIDE=STAGE,... (stages that need no ORPO run:
# beside_stages.py checks) runs in the plan's run folder beside the check (`--until`, one stage
# at a time), and the plan starts when both are over. The runner options given here go to the
# plan's start; the card's options are added to every runner, and so is RUN_OPTS (shell-quoted
# plan overrides the run needs, such as `--set vars.agents=...`; not run_dir: the check reads the
# plan's own run folder, runs/PLAN-NAME).
# Its log: $MATSQL_STATE/lrcheck.log (beside: $MATSQL_STATE/beside.log). Poll with `study.sh wait
# N` (it ships what the beside stages finish). `orpo_lr_check.sh ship $OUT` in a poll brings the
# decision, the logs and the check's picks and stage logs home in one file (`SHIP_FILES=7` for
# that poll's `study.sh wait`).
set -euo pipefail
STATE=${MATSQL_STATE:-/root/matsql}
REPO=$STATE/repo
case "${1:-}" in
  start)
    plan=${2:?usage: orpo_lr_check.sh start PLAN LR [options]} lr=${3:?usage: orpo_lr_check.sh start PLAN LR [options]}
    shift 3
    name=$(basename "$plan" .yaml) snap=$PWD
    [ -d "$REPO/runs/$name/manifests" ] || { echo "orpo_lr_check: no $REPO/runs/$name (study.sh unpack first)" >&2; exit 2; }
    mkdir -p "$REPO"
    rm -rf "$REPO/src" "$REPO/experiments" "$REPO/recipes" "$REPO/scripts" "$REPO/benchmarks"
    cp -r src experiments recipes scripts benchmarks pyproject.toml "$REPO/"
    printf '%q ' "$@" > "$STATE/lrcheck.args"
    setsid nohup bash -c '
      set -u
      cd "'"$REPO"'" && source scripts/device/env.sh
      run=runs/'"$name"' check="'"$STATE"'/lrcheck" lr='"$lr"' plan='"$plan"'
      . scripts/device/rules/card_slots.sh
      rm -rf "$check" && cp -a "$run" "$check"
      for s in orpo-iter1-val-sel-collab pick-iter1-val-sel-collab orpo-iter1-val-sel-indep pick-iter1-val-sel-indep; do
        rm -rf "$check/$s" "$check/manifests/$s.json" "$check/logs/$s.log"
      done
      beside=${BESIDE:-} ropts=${RUN_OPTS:-} bpid=""  # from the environment, as CARD_MIB
      if [ -n "$beside" ] && [ "$BESIDE_OK" = 1 ]; then
        if beside=$(python3 scripts/device/beside_stages.py "$plan" "$beside"); then
          eval "python3 -m matsql.cli experiment run \"\$plan\" $ropts --until \"\$beside\" --jobs 1 --keep-going $CARD_OPTS" \
            > "'"$STATE"'/beside.log" 2>&1 &
          bpid=$!
          echo "lrcheck: beside the check: $beside (pid $bpid)"
        else
          echo "lrcheck: nothing beside the check (beside_stages.py refused the list)"
        fi
      elif [ -n "$beside" ]; then
        echo "lrcheck: nothing beside the check (the card is under 120 GiB)"
      fi
      t0=$(date +%s)
      eval "python3 -m matsql.cli experiment run \"\$plan\" $ropts --set run_dir=\"\$check\" \
        --set \"vars.orpo_extra=--set trainer.learning_rate=\$lr\" --until pick-iter1-val-sel-indep \
        --jobs 2 $CARD_OPTS"
      echo "lrcheck: the check ran $(( $(date +%s) - t0 )) s"
      extra=""
      if python3 scripts/device/orpo_lr_rule.py "$run" "$check" --lr "$lr" --out "'"$STATE"'/lr-decision.json" --apply &&
         python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))[\"adopt\"] else 1)" "'"$STATE"'/lr-decision.json"; then
        extra=$(printf "%q " --set "vars.orpo_extra=--set trainer.learning_rate=$lr")
      fi
      if [ -n "$bpid" ]; then
        wait "$bpid"; echo "lrcheck: the stages beside it ended (rc $?) $(( $(date +%s) - t0 )) s after the check began"
      fi
      cd "'"$snap"'"
      eval "bash scripts/device/study.sh start '"$plan"' $(cat "'"$STATE"'/lrcheck.args") $ropts $extra $CARD_OPTS"
    ' > "$STATE/lrcheck.log" 2>&1 < /dev/null &
    echo "orpo lr check started (pid $!); log $STATE/lrcheck.log"
    ;;
  ship)
    # what the check leaves outside the plan's run folder, as ONE file in a poll's $OUT (a call
    # returns at most 8 files: poll with `SHIP_FILES=7 study.sh wait N`, then this):
    # lrcheck.tgz with the decision, the check's log and the beside stages' log, and the check's
    # picks, run records and stage logs (its adapters stay on the machine)
    out=${2:?usage: orpo_lr_check.sh ship OUT}
    mkdir -p "$out"
    (cd "$STATE" && {
      for f in lr-decision.json lrcheck.log beside.log; do [ ! -f "$f" ] || echo "$f"; done
      [ ! -d lrcheck ] || find lrcheck -path 'lrcheck/logs/*-iter1-val-sel-*.log' -o \
        -path 'lrcheck/*-iter1-val-sel-*/pick.json' -o -path 'lrcheck/orpo-iter1-val-sel-*/run.json' \
        -o -path 'lrcheck/orpo-iter1-val-sel-*/metrics.json'
    } > "$STATE/lrcheck.list")
    # logs still being written: GNU tar archives them as read and exits 1 ("file changed")
    tar -C "$STATE" -czf "$out/lrcheck.tgz" --warning=no-file-changed -T "$STATE/lrcheck.list" || [ $? -eq 1 ]
    ls -la "$out"
    ;;
  *) echo "usage: orpo_lr_check.sh start PLAN LR [experiment-run options] | ship OUT" >&2; exit 2 ;;
esac
