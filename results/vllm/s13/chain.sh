cd $MATSQL_STATE/snap && . scripts/device/env.sh
BENCH512_MBT=65536 bash scripts/device/vllm_checks.sh $MATSQL_STATE/s13 train_liger bench512 bench512_mbt16384
SLOTS=2; [ -f $MATSQL_STATE/decide.sh ] && . $MATSQL_STATE/decide.sh
echo "study with --gpu-slots $SLOTS"
bash scripts/device/study.sh start experiments/study-spider-v2.yaml --jobs 4 --gpu-slots $SLOTS --keep-going --prefer compare-primary
