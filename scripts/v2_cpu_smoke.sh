#!/usr/bin/env bash
# The v2 plan's wiring on this CPU before a lease spends GPU minutes on it: every stage of
# experiments/study-spider-v2.yaml at toy size on the embedded minibench (disjoint parts of the
# train split, K=2, 2 optimizer steps per training stage), `--keep-going`, two stages at a time.
#   bash scripts/v2_cpu_smoke.sh echo [RUN_DIR]       # echo agents, SmolLM2 tiny recipes: ~5 min
#   bash scripts/v2_cpu_smoke.sh prepared [RUN_DIR]   # SmolLM2 agents continuing the demo's
#                                                     # prepared team (recipes/tiny/prepared)
#   bash scripts/v2_cpu_smoke.sh canned [RUN_DIR]     # echo agents with canned replies: SQL that
#                                                     # runs (small constants, some right by value),
#                                                     # verdicts of both kinds: every stage, minutes
# echo: no candidate is right and no critique has a verdict, so the checkpoint picks stop with
# their clear error ("no checkpoint has a balanced accuracy") and what needs them does not run:
# it checks the stages before the picks (30 of 110 in session 12). prepared: the agents write
# SQL and verdicts, so the picks have something to choose by and the whole plan runs. Either
# checks the plan's wiring, not its numbers. Default RUN_DIR: /tmp/v2-cpu-smoke-MODE.
# GPU slots and kept workers on this CPU: CUDA_VISIBLE_DEVICES=0 makes one made-up card, e.g.
#   CUDA_VISIBLE_DEVICES=0 V2_SMOKE_ARGS="--warm --gpu-slots 2" bash scripts/v2_cpu_smoke.sh canned DIR
# (session 18: 112 of 112 stages, the same rollout records as without --warm: scripts/same_records.py)
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: v2_cpu_smoke.sh echo|prepared|canned [RUN_DIR]}
run=${2:-/tmp/v2-cpu-smoke-$mode}
repo=$PWD t=$PWD/recipes/tiny
mkdir -p "$run/recipes"
sets=(--set run_dir="$run/run" --set vars.train=minibench-train --set vars.k=2 --set vars.k_sft=1
  --set vars.fixer_samples=1 --set vars.shards=1
  --set "vars.sft_opts=--set trainer.max_steps=2" --set vars.orpo_steps=2 --set vars.save_steps=1
  --set vars.e1_steps=2)
case "$mode" in
  echo)
    cat > "$run/agents.yaml" <<'YAML'
defaults: {backend: echo}
agents:
  planner:  {temperature: 1.0, max_tokens: 32}
  val-sel:  {temperature: 1.0, max_tokens: 16}
  val-cond: {temperature: 1.0, max_tokens: 16}
  fixer:    {temperature: 0.0, max_tokens: 16}
  selector: {temperature: 0.0, max_tokens: 4}
YAML
    sets+=(--set vars.agents="$run/agents.yaml" --set vars.dev=minibench --set vars.bq=8
      --set vars.parts=sft=16,label=16,heldout=8,evaltrain=8 --set vars.branches=1)
    for a in planner val-sel val-cond fixer selector; do
      printf 'extends: %s/sft-%s.v1.yaml\n' "$t" "$a" > "$run/recipes/sft-$a.yaml"
    done
    ;;
  canned)
    # the echo backend's replies (backends/echo.py): each completion one of these, drawn by prompt,
    # sample and seed. 129 of minibench-train's 335 answers are counts, often small, so `SELECT 3`
    # is right for some questions: with 80 heldout questions the picks see right and wrong
    # candidates and both verdicts (12 had no right one), and every stage after them runs (the
    # numbers mean nothing; the wiring is what is checked)
    cat > "$run/agents.yaml" <<'YAML'
defaults: {backend: echo}
agents:
  planner:
    temperature: 1.0
    max_tokens: 32
    replies: &sql ["```sql\nSELECT 1\n```", "```sql\nSELECT 2\n```", "```sql\nSELECT 3\n```",
      "```sql\nSELECT 4\n```", "```sql\nSELECT 5\n```", "```sql\nSELECT 6\n```",
      "```sql\nSELECT COUNT(*) FROM students\n```", "```sql\nSELECT nonsense\n```"]
  val-sel:
    temperature: 1.0
    max_tokens: 16
    replies: &verdicts ["The columns match the question.\nConclude: correct",
      "The columns do not match the question.\nConclude: incorrect"]
  val-cond: {temperature: 1.0, max_tokens: 16, replies: *verdicts}
  fixer:    {temperature: 0.0, max_tokens: 16, replies: *sql}
  selector: {temperature: 0.0, max_tokens: 4, replies: ["Answer: 1", "Answer: 2"]}
YAML
    sets+=(--set vars.agents="$run/agents.yaml" --set "vars.dev=minibench --limit 24" --set vars.bq=8
      --set vars.parts=sft=16,label=16,heldout=80,evaltrain=8 --set vars.branches=2)
    for a in planner val-sel val-cond fixer selector; do
      printf 'extends: %s/sft-%s.v1.yaml\n' "$t" "$a" > "$run/recipes/sft-$a.yaml"
    done
    ;;
  prepared)
    # each SFT stage continues the prepared adapter (validators and selector: attention only, as
    # scripts/device/demo_prep.sh trained them); ORPO continues the SFT stage's adapter
    for a in planner val-sel val-cond fixer selector; do
      printf 'extends: %s/sft-%s.v1.yaml\ninit_from: %s/prepared/%s\n' "$t" "$a" "$t" "$a" > "$run/recipes/sft-$a.yaml"
    done
    for a in val-sel val-cond selector; do
      printf 'peft:\n  target_modules: [q_proj, k_proj, v_proj, o_proj]\n' >> "$run/recipes/sft-$a.yaml"
    done
    # two critiques per candidate at label time: with one, no candidate has both a right and a
    # wrong verdict, every label set is empty and the ORPO stages end "no_data" (session 13)
    sets+=(--set vars.agents="$repo/experiments/agents/smollm2-cpu.yaml" --set "vars.dev=minibench --limit 4"
      --set vars.bq=16 --set vars.parts=sft=8,label=8,heldout=10,evaltrain=4 --set vars.branches=2)
    export MATSQL_MERGE_ADAPTERS=1 OMP_NUM_THREADS=1  # as the demo plan runs SmolLM2 on 2 cores
    ;;
  *) echo "usage: v2_cpu_smoke.sh echo|prepared|canned [RUN_DIR]" >&2; exit 2 ;;
esac
for a in val-sel val-cond; do
  printf 'extends: %s/orpo-%s-collab.v1.yaml\n' "$t" "$a" > "$run/recipes/orpo-$a.yaml"
  [ "$mode" = prepared ] && printf 'peft:\n  target_modules: [q_proj, k_proj, v_proj, o_proj]\n' >> "$run/recipes/orpo-$a.yaml"
done
r=$run/recipes
sets+=(--set vars.recipe_sft_planner="$r/sft-planner.yaml" --set vars.recipe_sft_val_sel="$r/sft-val-sel.yaml"
  --set vars.recipe_sft_val_cond="$r/sft-val-cond.yaml" --set vars.recipe_sft_fixer="$r/sft-fixer.yaml"
  --set vars.recipe_sft_selector="$r/sft-selector.yaml" --set vars.recipe_fixer_e1="$r/sft-fixer.yaml"
  --set vars.recipe_orpo_val_sel="$r/orpo-val-sel.yaml" --set vars.recipe_orpo_val_cond="$r/orpo-val-cond.yaml")
t0=$SECONDS
# V2_SMOKE_ARGS: more runner options, shell-quoted, e.g. "--until ref-sft-val-sel" for one stage
# and what it needs, "--set 'vars.orpo_extra=--set trainer.learning_rate=2.0e-4'" or
# "--train-deadline +0"; collect gets their --set pairs only
eval "more=(${V2_SMOKE_ARGS:-})"
msets=()
for ((i = 0; i < ${#more[@]}; i++)); do
  [ "${more[i]}" = --set ] && msets+=(--set "${more[i + 1]}")
done
matsql experiment run experiments/study-spider-v2.yaml --jobs 2 --keep-going --prefer compare-primary "${sets[@]}" \
  "${more[@]}" > "$run/run.log" 2>&1
echo "experiment run: exit $? in $(( (SECONDS - t0) / 60 )) min (log $run/run.log)"
# what a lease's results go through here: the results folder of whatever finished
matsql experiment collect experiments/study-spider-v2.yaml --out "$run/collected" "${sets[@]}" "${msets[@]}" \
  > "$run/collect.log" 2>&1
echo "experiment collect: exit $? ($run/collected, log $run/collect.log)"
python3 - "$run/run/manifests" <<'PY'
import collections, json, pathlib, sys
st = {m.stem: json.loads(m.read_text())["status"] for m in pathlib.Path(sys.argv[1]).glob("*.json")}
print(dict(collections.Counter(st.values())), "| not done:", sorted(k for k, v in st.items() if v != "done"))
# a training stage that found no rows saves an untrained adapter and says so in run.json
runs = {p.parent.name: json.loads(p.read_text()).get("status") for p in pathlib.Path(sys.argv[1]).parent.glob("*/run.json")}
print("training runs:", dict(collections.Counter(runs.values())), "| without data:", sorted(k for k, v in runs.items() if v == "no_data"))
PY
