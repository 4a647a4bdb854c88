# Sourced by chain.sh after `vllm_checks.sh OUT train`, for a v2 lease that decides on four slots
# (results/study-spider-v2/PLAN.md; lease 2 runs at two without it):
# --gpu-slots 4 if the committed ORPO recipe peaked at 36 GiB or less (half an H100 is 39.6: an
# ORPO run then fits beside a rollout or a checkpoint pick), else 2 (training alone on the card).
peak=$(python3 -c '
import json, sys
try:
    v = json.load(open(sys.argv[1]))["methods"]["orpo"]["variants"]["committed"]
    print(v.get("peak_gpu_memory_gib") or "")
except Exception:
    print("")' "${CHECKS_OUT:-$MATSQL_STATE/checks}/train.json")
if [ -n "$peak" ] && python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 36 else 1)" "$peak"; then
  SLOTS=4
fi
echo "rule orpo_slots: committed ORPO peak ${peak:-unknown} GiB -> --gpu-slots $SLOTS"
