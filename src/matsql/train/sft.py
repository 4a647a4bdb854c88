"""SFT on TRL's ``SFTTrainer`` with completion-only loss.

Rows arrive tokenised by :func:`matsql.train.encoding.encode_sft` with ``input_ids`` and
``labels`` (-100 over the prompt and the forced prefix). TRL keeps a ``labels`` column as it is
(``_prepare_dataset`` builds labels only when the column is absent), so the loss is exactly
the completion tokens plus one end-of-turn: the same mask TRL's ``completion_only_loss`` would
build, but with our left-cut prompts and no duplicated BOS/EOS.
"""

from __future__ import annotations

from typing import Any

from trl import SFTConfig, SFTTrainer

CONFIG = SFTConfig  # what a recipe's `trainer:` mapping is passed to (runner.trainer_config)


def make_trainer(
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    args: SFTConfig,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
) -> SFTTrainer:
    from datasets import Dataset

    def ds(rows: list[dict[str, Any]]) -> Dataset:
        return Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds(train_rows),
        eval_dataset=ds(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
