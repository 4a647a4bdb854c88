#!/usr/bin/env bash
# The v2 plan's wiring on this CPU before a lease spends GPU minutes on it: every stage of
# experiments/study-spider-v2.yaml at toy size (the embedded minibench, disjoint parts of 16/16/8/8
# questions, K=2, SmolLM2's tiny recipes for 2 optimizer steps, every agent the echo backend),
# `--keep-going`. With echo agents no candidate is right and no critique has a verdict, so the
# checkpoint picks stop with their clear error ("no checkpoint has a balanced accuracy") and what
# needs them does not run: this checks the stages before the picks (30 of 110 in session 12,
# about 5 minutes on 2 cores) and that a pick fails loudly, not the numbers.
#   bash scripts/v2_cpu_smoke.sh [RUN_DIR]     # default /tmp/v2-cpu-smoke
set -uo pipefail
cd "$(dirname "$0")/.."
run=${1:-/tmp/v2-cpu-smoke}
mkdir -p "$run"
cat > "$run/agents-echo.yaml" <<'YAML'
defaults: {backend: echo}
agents:
  planner:  {temperature: 1.0, max_tokens: 32}
  val-sel:  {temperature: 1.0, max_tokens: 16}
  val-cond: {temperature: 1.0, max_tokens: 16}
  fixer:    {temperature: 0.0, max_tokens: 16}
  selector: {temperature: 0.0, max_tokens: 4}
YAML
t=recipes/tiny
matsql experiment run experiments/study-spider-v2.yaml --jobs 2 --keep-going --prefer compare-primary \
  --set run_dir="$run/run" --set vars.agents="$run/agents-echo.yaml" \
  --set vars.recipe_sft_planner=$t/sft-planner.v1.yaml --set vars.recipe_sft_val_sel=$t/sft-val-sel.v1.yaml \
  --set vars.recipe_sft_val_cond=$t/sft-val-cond.v1.yaml --set vars.recipe_sft_fixer=$t/sft-fixer.v1.yaml \
  --set vars.recipe_sft_selector=$t/sft-selector.v1.yaml --set vars.recipe_orpo_val_sel=$t/orpo-val-sel-collab.v1.yaml \
  --set vars.recipe_orpo_val_cond=$t/orpo-val-cond-collab.v1.yaml --set vars.recipe_fixer_e1=$t/sft-fixer.v1.yaml \
  --set vars.train=minibench-train --set vars.dev=minibench --set vars.parts=sft=16,label=16,heldout=8,evaltrain=8 \
  --set vars.k=2 --set vars.k_sft=1 --set vars.branches=1 --set vars.fixer_samples=1 --set vars.bq=8 \
  --set vars.shards=1 --set "vars.sft_opts=--set trainer.max_steps=2" --set vars.orpo_steps=2 \
  --set vars.save_steps=1 --set vars.e1_steps=2 > "$run/run.log" 2>&1
echo "experiment run: exit $? (log $run/run.log)"
python3 - "$run/run/manifests" <<'PY'
import collections, json, pathlib, sys
st = {m.stem: json.loads(m.read_text())["status"] for m in pathlib.Path(sys.argv[1]).glob("*.json")}
print(dict(collections.Counter(st.values())), "| not done:", sorted(k for k, v in st.items() if v != "done"))
PY
