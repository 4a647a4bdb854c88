#!/usr/bin/env bash
# Build what device calls carry, once here: one tar of everything a lease needs, cut into parts
# that each fit one call beside the working tree (64 MiB a call, tree included):
#   - the trimmed vLLM 0.26.0 install (scripts/device/vllm-0.26.0-wheels.txt, installed here for
#     Python 3.12 into a folder, FlashAttention 2's 123 MiB library left out: Hopper runs FA3),
#     zstd-compressed: 241 MiB instead of 452 MiB of wheels;
#   - the other wheels the GPU image lacks (TRL, datasets, sqlglot, gguf, zstandard, Liger's
#     Triton kernels for bench_train's liger variants: 11 MiB);
#   - the Spider files the study reads;
#   - the sha256-pinned Qwen2.5-Coder-0.5B GGUF.
# Then, on the device: `setup.sh part partNN` per part (carry .carry/blob/partNN), `setup.sh join`.
#   bash scripts/device/pack.sh            # session 6: 17 parts of 44 MiB beside a 17 MiB tree
#   LITE=1 bash scripts/device/pack.sh     # wheels only (no Spider data, no GGUF): 8 parts of 32 MiB
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${MATSQL_DATA:-../shared/data}
# A part plus the working tree must fit one call (64 MiB): size parts to what the tree leaves.
# Files a sparse checkout leaves out (scripts/device/README.md, "A lighter tree") do not travel.
TREE_MB=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | python3 -c '
import os, sys
print(-(-sum(os.path.getsize(p) for p in sys.stdin.read().split("\0") if os.path.isfile(p)) // 1048576))')
PART=${PART_MB:-$(( 62 - TREE_MB ))}
echo "working tree ${TREE_MB} MiB: parts of ${PART} MiB"
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_5_x86_64 any; do
  PLAT+=(--platform "$p")
done
[ -f .whl/vllm/vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl ] || bash scripts/device/fetch_vllm.sh
if [ ! -f .whl/vllm-site.tar.zst ]; then
  rm -rf .whl/vllm-site
  python3 -m pip install -q --no-deps --no-compile --no-index --target .whl/vllm-site --python-version 3.12 \
    --implementation cp --only-binary=:all: "${PLAT[@]}" .whl/vllm/*.whl
  rm -f .whl/vllm-site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so
  tar -C .whl/vllm-site -cf - . | zstd -T0 -12 --long=27 -q -f -o .whl/vllm-site.tar.zst
fi
rm -rf .whl/blob && mkdir -p .whl/blob/whl .whl/blob/data/spider .whl/blob/data/spider-syn
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d .whl/blob/whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 sqlglot==30.30.0 gguf==0.19.0 \
  zstandard==0.25.0 omegaconf==2.4.0 liger-kernel==0.8.5
ln -f .whl/vllm-site.tar.zst .whl/blob/vllm-site.tar.zst
if [ "${LITE:-0}" = 1 ]; then  # the wheels only (8 parts): random-weight checks, SmolLM2 demo training
  rm -rf .whl/blob/data
else
  cp -r "$DATA"/spider/{dev.json,tables.json,dev_gold.sql,train_gold.sql,database} .whl/blob/data/spider/
  cp "$DATA"/spider-syn/train_spider.json .whl/blob/data/spider-syn/
  GGUF=$(python3 -c 'from matsql.models import resolve_model; print(resolve_model("qwen2.5-coder-0.5b-instruct").path)')
  ln -sf "$GGUF" .whl/blob/model.gguf
fi
rm -rf .carry/blob && mkdir -p .carry/blob
tar -C .whl/blob -chf - . | split -b "${PART}m" -d - .carry/blob/part
(cd .carry/blob && sha256sum part* > SHA256SUMS)
du -sh .carry/blob; ls .carry/blob | grep -c part
