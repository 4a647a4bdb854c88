# Sourced by chain.sh after the checks (session 13): adopt the fastest Liger SFT variant of
# train_liger.json into the snapshot's recipes if it is >= 1.10x the committed recipe.
pick=$(python3 - <<'PY'
import json
try:
    v = json.load(open("$MATSQL_STATE/s13/train_liger.json"))["methods"]["sft"]["variants"]
except Exception as e:
    print("none"); raise SystemExit
c = {k: r.get("speedup_vs_committed", 0) for k, r in v.items() if k != "committed" and "error" not in r}
best = max(c, key=c.get) if c else None
print(best if best and c[best] >= 1.10 else "none")
PY
)
echo "decide: train_liger pick = $pick"
cd $MATSQL_STATE/snap
case "$pick" in
  *liger*) printf '  use_liger_kernel: true\n' >> recipes/qwen0.5b/base-sft.yaml ;;
esac
case "$pick" in
  *nodrop*) sed -i 's/^  dropout: 0.05$/  dropout: 0.0/' recipes/qwen0.5b/base.yaml ;;
esac
case "$pick" in
  *bylen*) printf '  train_sampling_strategy: group_by_length\n' >> recipes/qwen0.5b/base-sft.yaml ;;
esac
echo "$pick" > $MATSQL_STATE/s13/decided.txt
git diff --no-index /dev/null /dev/null >/dev/null 2>&1 || true
tail -n 4 recipes/qwen0.5b/base-sft.yaml; grep dropout recipes/qwen0.5b/base.yaml
