# Sourced by orpo_lr_check.sh (and usable before any `study.sh start` of study-spider-v2): how the
# runner shares the lent card, from its memory (results/study-spider-v2/PLAN.md, "Lease 3"):
# - under 120 GiB (an H100, 79 GiB): --gpu-slots 2, training stages on the whole card
#   (vars.train_slots 8): ORPO peaked at 40.5-42.4 GiB, over half an H100 (session 14);
# - 120 GiB or more (an H200, 139 GiB): --gpu-slots 4 and vars.train_slots 2. A training stage then
#   holds half the card (a 69.5 GiB cap for a 42 GiB peak) beside a two-shard rollout whose engines
#   take 0.2 of the card each (27.8 GiB; an engine had 31.7 on an H100 at 2 slots in lease 2), and
#   BESIDE_OK=1: stages that need no ORPO run may share the card with the learning-rate check.
# Sets SLOTS, TRAIN_SLOTS, BESIDE_OK and CARD_OPTS (the runner options). CARD_MIB overrides the
# card's memory in MiB (tests; a machine without nvidia-smi counts as under 120 GiB).
mib=${CARD_MIB:-$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -d ' ')}
case "$mib" in ''|*[!0-9]*) mib=0 ;; esac
if [ "$mib" -ge $((120 * 1024)) ]; then
  SLOTS=4 TRAIN_SLOTS=2 BESIDE_OK=1
else
  SLOTS=2 TRAIN_SLOTS=8 BESIDE_OK=0
fi
CARD_OPTS="--gpu-slots $SLOTS --set vars.train_slots=$TRAIN_SLOTS"
echo "rule card_slots: card ${mib} MiB -> $CARD_OPTS (stages beside the check: $BESIDE_OK)"
