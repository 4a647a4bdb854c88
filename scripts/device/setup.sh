#!/usr/bin/env bash
# Prepare a lent GPU machine in steps that each fit one device call (64 MiB carried):
#   bash scripts/device/setup.sh init         # carry .carry/whl .carry/data: wheels + benchmark data
#   bash scripts/device/setup.sh part part03  # carry .carry/model/part03: one model part
#   bash scripts/device/setup.sh join         # join the parts, verify the pinned sha256
# Make the carried folders here first: scripts/device/pack.sh
set -euo pipefail
STATE=${MATSQL_STATE:-/root/matsql}
GGUF=$STATE/cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
mkdir -p "$STATE/site" "$STATE/parts" "$STATE/cache/models"
case "$1" in
  init)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" .carry/whl/*.whl
    rm -rf "$STATE/data" && cp -r .carry/data "$STATE/data"
    nvidia-smi -L; python3 -c 'import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.device_count())'
    ;;
  part) cp ".carry/model/$2" "$STATE/parts/$2"; ls -la "$STATE/parts" | tail -n +2 | wc -l ;;
  join)
    if [ ! -f "$GGUF" ]; then cat "$STATE"/parts/part* > "$GGUF.tmp" && mv "$GGUF.tmp" "$GGUF"; fi
    echo "$SHA  $GGUF" | sha256sum -c -
    ;;
  *) echo "usage: setup.sh init | part NAME | join" >&2; exit 2 ;;
esac
