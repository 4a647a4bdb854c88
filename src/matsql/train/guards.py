"""Training guards: a known-bad attention kernel off, and a stop at the first non-finite step.

On torch 2.11 with an H100, SDPA's default cuDNN backend returns NaN in the query gradient when
an explicit attention mask is passed and the padded length is 64 mod 128, once a row's
log-sum-exp is very negative - which Qwen2.5's "massive activation" head produces
(pytorch/pytorch#196678, huggingface/trl#7181). Our first SFT run on the GPU hit exactly this:
``grad_norm: nan`` from the first logged step, LoRA weights all NaN, and a planner that emits
only ``!!!!``. The flash, memory-efficient and math kernels are clean, so training turns cuDNN
attention off. The guard makes any other divergence fail the run at once instead of training
on NaN for the rest of its steps and saving a broken adapter as done.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from matsql.gpu import disable_cudnn_attention

__all__ = ["NonFiniteGuard", "TrainingDiverged", "disable_cudnn_attention"]


class TrainingDiverged(RuntimeError):
    pass


class NonFiniteGuard(TrainerCallback):
    """Raise :class:`TrainingDiverged` when a logged loss or gradient norm is NaN or infinite."""

    keys = ("loss", "grad_norm", "eval_loss")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        for k in self.keys:
            v = (logs or {}).get(k)
            if isinstance(v, int | float) and not math.isfinite(v):
                raise TrainingDiverged(
                    f"{k} = {v} at step {state.global_step} (epoch {state.epoch}): training diverged; "
                    "nothing was saved as done (see matsql/train/guards.py for the known cuDNN cause)"
                )
