"""Decode-step time with transformers' SDPA path vs matsql's grouped-query decode attention.

This timed ``matsql.backends.attention`` (decode attention per key/value head, without
transformers <= 5.17's ``repeat_kv``) against transformers' SDPA. The kernel was deleted in
issue 15 (item 4): GPU generation runs on vLLM, the CPU demo ran without it (it made a CPU
decode step slower there), and transformers 5.25 packs grouped-query heads for decode steps
itself (``pack_gqa``). The committed measurements (``results/gpu-session2/``,
``results/study-spider-s3/``, ``results/study-spider-s4/bench/``) came from the script as it
was at commit 43a38d4; to repeat them, run it from a checkout of that commit:

    git worktree add /tmp/matsql-43a38d4 43a38d4 && cd /tmp/matsql-43a38d4
    PYTHONPATH=src python benchmarks/bench_decode_attention.py --model qwen2.5-coder-0.5b-instruct \
        --batch 256 --prompt-tokens 1000 --steps 32
"""

from __future__ import annotations

import sys

LAST_COMMIT = "43a38d4"


def main() -> None:
    sys.exit(
        "bench_decode_attention.py: the grouped-query decode kernel it timed (matsql.backends.attention) "
        f"was deleted in issue 15; run the script from commit {LAST_COMMIT} (see its docstring)"
    )


if __name__ == "__main__":
    main()
