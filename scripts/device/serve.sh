#!/usr/bin/env bash
# One vLLM server for a whole plan on the lent GPU (issue 15; experiments/agents/qwen0.5b-served.yaml):
# started once per lease, it answers every generation stage, and loads each stage's adapters at run
# time (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). Training stages share the card: the server takes
# GPU_FRACTION of its memory (default 0.45). From the repository root, after setup.sh join:
#   bash scripts/device/serve.sh start [GPU_FRACTION]   # returns once /health answers; log: $MATSQL_STATE/serve.log
#   bash scripts/device/serve.sh stop
# SERVE_EAGER=1 starts it without CUDA graphs (--enforce-eager), as the in-process engine runs LoRA
# per request: session 11's served engine sampled worse (pass@8 -3.6 pp, p 0.008) with graphs on,
# the one setting in which it differed from the in-process engines (vllm_checks.sh served_eager).
set -euo pipefail
. scripts/device/env.sh
port=${MATSQL_SERVE_PORT:-8000}
mkdir -p "$MATSQL_STATE"
case ${1:?usage: serve.sh start [GPU_FRACTION] | stop} in
start)
  frac=${2:-0.45}
  folder=$(python3 -c "from matsql.models.loading import dense_folder; print(dense_folder('qwen2.5-coder-0.5b-instruct')[0])")
  t0=$SECONDS
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True nohup python3 -m vllm.entrypoints.openai.api_server \
    --model "$folder" --served-model-name qwen2.5-coder-0.5b-instruct --host 127.0.0.1 --port "$port" \
    --dtype bfloat16 --gpu-memory-utilization "$frac" --max-model-len 4096 --enable-prefix-caching \
    --enable-lora --max-lora-rank 64 --max-loras 4 --max-cpu-loras 16 ${SERVE_EAGER:+--enforce-eager} \
    > "$MATSQL_STATE/serve.log" 2>&1 &
  echo $! > "$MATSQL_STATE/serve.pid"
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; then
      echo "serve: up after $((SECONDS - t0)) s (pid $(cat "$MATSQL_STATE/serve.pid"), $frac of the card)"; exit 0
    fi
    kill -0 "$(cat "$MATSQL_STATE/serve.pid")" 2>/dev/null || break
    sleep 1
  done
  echo "serve: not up after $((SECONDS - t0)) s"; tail -n 40 "$MATSQL_STATE/serve.log"; exit 1 ;;
stop)
  kill "$(cat "$MATSQL_STATE/serve.pid" 2>/dev/null)" 2>/dev/null || true; rm -f "$MATSQL_STATE/serve.pid" ;;
*) echo "usage: serve.sh start [GPU_FRACTION] | stop"; exit 2 ;;
esac
