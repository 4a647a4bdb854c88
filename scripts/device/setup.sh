#!/usr/bin/env bash
# Prepare a lent GPU machine in steps that each fit one device call (64 MiB carried):
#   bash scripts/device/setup.sh part part03  # carry .carry/blob/part03: one part (~6 s held each)
#   bash scripts/device/setup.sh join         # unpack: vLLM + wheels on PYTHONPATH, data, the GGUF
#                                             # verified, and its bf16 safetensors folder made once
# Make the parts here first: scripts/device/pack.sh. Then `. scripts/device/env.sh` in each call.
set -euo pipefail
STATE=${MATSQL_STATE:-/root/matsql}
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
GGUF=$STATE/cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
mkdir -p "$STATE/site" "$STATE/parts" "$STATE/cache/models"
case "$1" in
  part)
    cp ".carry/blob/$2" "$STATE/parts/$2"
    (cd .carry/blob && grep " $2\$" SHA256SUMS) | (cd "$STATE/parts" && sha256sum -c --quiet -) && echo "$2 ok"
    ls "$STATE/parts" | wc -l
    ;;
  join)
    t0=$(date +%s)
    rm -rf "$STATE/in" && mkdir -p "$STATE/in"
    cat "$STATE"/parts/part* | tar -C "$STATE/in" -xf -
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" "$STATE"/in/whl/*.whl
    PYTHONPATH=$STATE/site python3 - "$STATE/in/vllm-site.tar.zst" "$STATE/site" <<'PY'
import sys, tarfile, zstandard
with open(sys.argv[1], "rb") as fh, zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(fh) as r:
    tarfile.open(fileobj=r, mode="r|").extractall(sys.argv[2], filter="fully_trusted")
PY
    if [ ! -f "$STATE/in/model.gguf" ]; then  # a LITE carry: wheels only
      rm -rf "$STATE/in" "$STATE/parts"; echo "unpacked (wheels only) in $(( $(date +%s) - t0 )) s"; nvidia-smi -L
      exit 0
    fi
    rm -rf "$STATE/data" && mv "$STATE/in/data" "$STATE/data"
    mv "$STATE/in/model.gguf" "$GGUF"
    echo "$SHA  $GGUF" | sha256sum -c -
    rm -rf "$STATE/in" "$STATE/parts"
    echo "unpacked in $(( $(date +%s) - t0 )) s"
    nvidia-smi -L
    PYTHONPATH=$STATE/site:$PWD/src MATSQL_CACHE=$STATE/cache python3 -c '
import time, torch, transformers, vllm
t = time.time()
from matsql.models import dense_folder
folder, digest = dense_folder("qwen2.5-coder-0.5b-instruct")
print("torch", torch.__version__, "transformers", transformers.__version__, "vllm", vllm.__version__)
print("bf16 folder", folder.name, "sha256", digest[:16], f"({time.time() - t:.0f} s)")'
    ;;
  *) echo "usage: setup.sh part NAME | join" >&2; exit 2 ;;
esac
