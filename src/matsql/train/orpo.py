"""ORPO on TRL's ``trl.experimental.orpo.ORPOTrainer``, with three stated differences.

1. **NLL term over the chosen completion only** (``nll_scope: completion``, the default, as
   MATS trained). TRL 1.16 computes ORPO's NLL over the whole chosen sequence, prompt included
   (``concatenated_forward``: labels = input_ids wherever attention_mask is 1; upstream chose
   this on purpose, huggingface/trl#1516 and #2527). With ~800-token schema prompts and
   ~20-token critiques, that term would mostly teach the model to reproduce schemas.
   ``nll_scope: sequence`` restores TRL's behaviour. Either way the NLL is a token mean over
   the batch, like TRL's ``CrossEntropyLoss``.
2. **Safe log-odds** (:mod:`matsql.train.losses`): TRL's ``log1mexp`` gives NaN gradients for
   confident completions (average ``log p`` near 0).
3. **Our tokenisation** (:mod:`matsql.train.encoding`): rows arrive tokenised (prompt cut from
   the left of the user turn, completions whole, one BOS, one end-of-turn). TRL's own
   ``tokenize_row`` cuts the *completion* when a sequence is too long and adds EOS after the
   template's end-of-turn, so it is bypassed.

The odds-ratio term and the metrics (``rewards/chosen|rejected|accuracies|margins`` with
``eval_`` twins, rewards = ``beta * average log p``) are TRL's.

With the completion-only NLL the LM head runs only where a completion token is predicted
(``logits_to_keep``: the positions any row of the batch scores). The loss needs nothing else,
and a batch's full logits (16 sequences x ~900 tokens x 151,936 words) are about 4 GB in bf16
plus their gradient. Same loss; ``logits/chosen|rejected`` are then the mean logit over each
row's completion tokens, not over the whole sequence. ``MATSQL_ORPO_LOGITS=all`` computes every
position's logits as before (for benchmarks).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from trl.experimental.orpo import ORPOConfig, ORPOTrainer
from trl.trainer.utils import selective_log_softmax

from matsql.train import losses

CONFIG = ORPOConfig  # what a recipe's `trainer:` mapping is passed to (runner.trainer_config)

TOKENISED_COLUMNS = (
    "prompt_input_ids",
    "prompt_attention_mask",
    "chosen_input_ids",
    "chosen_attention_mask",
    "chosen_labels",
    "rejected_input_ids",
    "rejected_attention_mask",
    "rejected_labels",
)


def completion_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of completion-token log-probs and their count (labels -100 = ignored)."""
    return target_logps(logits[:, :-1, :], labels[:, 1:])


def target_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of log p(target) over positions whose target is not -100, and their count;
    ``logits[:, j]`` predicts ``targets[:, j]`` (already shifted)."""
    mask = targets != -100
    # TRL's selective_log_softmax never materialises a full-vocabulary log-softmax copy
    logps = selective_log_softmax(logits, torch.where(mask, targets, 0))
    return (logps * mask).sum(-1), mask.sum(-1)


def scored_positions(labels: torch.Tensor) -> torch.Tensor | None:
    """Positions ``t`` whose next token some row scores (``labels[:, t + 1] != -100``): the only
    logits the completion-only loss reads. None when there are none."""
    pos = (labels[:, 1:] != -100).any(0).nonzero().squeeze(-1)
    return pos if pos.numel() else None


class MatsORPOTrainer(ORPOTrainer):
    """ORPOTrainer with a completion-only NLL, safe log-odds and pre-tokenised rows."""

    def __init__(self, *args: Any, nll_scope: str = "completion", **kwargs: Any):
        if nll_scope not in ("completion", "sequence"):
            raise ValueError(f"nll_scope must be 'completion' or 'sequence', got {nll_scope!r}")
        self.nll_scope = nll_scope
        super().__init__(*args, **kwargs)

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        missing = [c for c in TOKENISED_COLUMNS if c not in feature]
        if missing:
            raise ValueError(
                f"MatsORPOTrainer expects rows tokenised by matsql.train.encoding; missing {missing}"
            )
        return {}

    def odds_ratio_loss(self, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor):
        out = losses.odds_ratio_loss(policy_chosen_logps, policy_rejected_logps, self.beta)
        return (out[0], out[1].to(self.accelerator.device), out[2].to(self.accelerator.device), *out[3:])

    def concatenated_forward(self, model: Any, batch: dict[str, Any]):
        if self.is_encoder_decoder:
            raise NotImplementedError("matsql trains decoder-only models")
        cb = self.concatenated_inputs(
            batch, is_encoder_decoder=False, padding_value=self.padding_value, device=self.accelerator.device
        )
        n = batch["chosen_labels"].shape[0]
        labels = cb["concatenated_labels"]
        kw = {"output_router_logits": True} if self.aux_loss_enabled else {}
        keep = None
        if self.nll_scope == "completion" and os.environ.get("MATSQL_ORPO_LOGITS", "completion") != "all":
            keep = scored_positions(labels)
        if keep is not None:
            kw["logits_to_keep"] = keep  # the LM head at these positions only (transformers >= 4.50)
        outputs = model(
            cb["concatenated_input_ids"],
            attention_mask=cb["concatenated_attention_mask"],
            use_cache=False,
            **kw,
        )
        logits = outputs.logits
        # predicted[:, j] scores targets[:, j]
        if keep is not None:
            predicted, targets = logits, labels[:, 1:][:, keep]
        else:
            predicted, targets = logits[:, :-1, :], labels[:, 1:]
        sums, counts = target_logps(predicted, targets)
        avg = sums / counts.clamp(min=1)
        if self.nll_scope == "completion":
            nll = -sums[:n].sum() / counts[:n].sum().clamp(min=1)
            # TRL logs the mean of what comes back as logits: each row's completion positions
            scored = targets != -100
            shown = (predicted[:n][scored[:n]], predicted[n:][scored[n:]])
        else:  # TRL 1.16: every attended token of the chosen sequence, prompt included
            full = torch.where(cb["concatenated_attention_mask"] == 1, cb["concatenated_input_ids"], -100)
            s, c = completion_logps(logits[:n], full[:n])
            nll = -s.sum() / c.sum().clamp(min=1)
            shown = (logits[:n, :-1, :], logits[n:, :-1, :])
        out = (avg[:n], avg[n:], *shown, nll)
        return (*out, outputs.aux_loss) if self.aux_loss_enabled else out


def pair_length(row: dict[str, Any]) -> int:
    """A pair's padded length in a batch: its longer sequence. Stored as the ``length`` column, so
    ``trainer.train_sampling_strategy: group_by_length`` batches pairs of similar length
    (transformers' sampler reads that column; it would look for ``input_ids``, which pairs lack).
    On the v2 study's iter1 pairs, batches of 8 random pairs are 33% padding, grouped 2%
    (``benchmarks/orpo_padding.py``)."""
    return max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))


def make_trainer(
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    args: ORPOConfig,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    nll_scope: str = "completion",
) -> MatsORPOTrainer:
    from datasets import Dataset

    def ds(rows: list[dict[str, Any]]) -> Dataset:
        return Dataset.from_list(
            [{c: r[c] for c in TOKENISED_COLUMNS} | {"length": pair_length(r)} for r in rows]
        )

    return MatsORPOTrainer(
        model=model,
        args=args,
        train_dataset=ds(train_rows),
        eval_dataset=ds(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        nll_scope=nll_scope,
    )
