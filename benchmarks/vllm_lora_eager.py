"""LoRA through the vllm backend in eager mode vs the base model on the same engine (the run
behind results/vllm/lora-eager.log): 64 spider-dev planner prompts x K=8, T=1.0, 320 tokens,
two rounds (the first includes the LoRA kernels' JIT). With CUDA graphs, a LoRA engine's start
hung on the H100 (results/vllm/README.md).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python3 benchmarks/vllm_lora_eager.py
    VLLM_USE_V2_MODEL_RUNNER=0 python3 benchmarks/vllm_lora_eager.py --graphs   # CUDA graphs, V1 runner
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import vllm_parity as vp

from matsql.backends.vllm_local import EngineSettings, VLLMBackend, VLLMEngine
from matsql.models import dense_folder, load_tokenizer

ap = argparse.ArgumentParser(description="LoRA vs base through the vllm backend")
ap.add_argument("--graphs", action="store_true", help="capture CUDA graphs (the default run is eager)")
ap.add_argument("--questions", type=int, default=64)
args = ap.parse_args()
folder, digest = dense_folder("qwen2.5-coder-0.5b-instruct")
adapter = vp.random_adapter(folder, Path(tempfile.mkdtemp()) / "r8")
engine = VLLMEngine(
    folder,
    load_tokenizer(folder),
    "x",
    EngineSettings(gpu_memory_utilization=0.3, enforce_eager=not args.graphs),
)
lora, base = VLLMBackend(engine, adapter=str(adapter)), VLLMBackend(engine)
prompts = vp.planner_prompts(args.questions)
for i in range(2):
    for name, backend in (("lora", lora), ("base", base)):
        backend.stats.__init__()
        t = time.time()
        backend.generate(prompts, n=8, temperature=1.0, max_tokens=320, seed=0)
        dt = time.time() - t
        print(name, i, round(dt, 1), "s", round(backend.stats.completion_tokens / dt), "tok/s", flush=True)
