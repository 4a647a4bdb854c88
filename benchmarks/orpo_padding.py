"""How much of an ORPO batch is padding, with pairs drawn at random and grouped by length? (CPU)

TRL's ORPO collator pads a batch's chosen and rejected sequences to the longest among them. The
validators' prompts range from a few hundred to 1,280 tokens (schemas of every size), so
random batches carry much padding. ``trainer.train_sampling_strategy: group_by_length`` (with
the ``length`` column ``matsql.train.orpo`` stores) draws batches of similar length. This script
tokenises pair sets as a recipe's training does and counts the padding under both orders:
a seeded random permutation (the default sampler's) and transformers' own length-grouped
indices, in batches of the recipe's ``per_device_train_batch_size`` pairs.

    python benchmarks/orpo_padding.py --recipe recipes/qwen0.5b/orpo-iter1-val-sel-collab.v1.yaml \
        runs/study-spider-v2/labels-iter1-val-sel/collab/pairs runs/study-spider-v2/labels-iter1-val-sel/independent/pairs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def padding_share(lengths: list[int], order: list[int], batch: int) -> float:
    """Share of a batch's padded tokens (pairs x 2 sequences x the longest) that is padding."""
    real = padded = 0
    for a in range(0, len(order), batch):
        b = [lengths[i] for i in order[a : a + batch]]
        real += sum(b)
        padded += len(b) * max(b)
    return 1 - real / padded if padded else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="pair folders (matsql labels build's .../pairs)")
    ap.add_argument("--recipe", required=True, help="the ORPO recipe whose tokenisation and batch to use")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from matsql.evaluate.portable import portable_text
    from matsql.models import dense_folder, load_tokenizer
    from matsql.train.config import load_recipe
    from matsql.train.data import load_split
    from matsql.train.encoding import chat_format
    from matsql.train.orpo import pair_length
    from matsql.train.runner import limits_of, tokenise

    out: list[dict[str, Any]] = []
    for path in args.pairs:
        recipe = load_recipe(args.recipe, [f"data.sources.0.path={path}", f"data.eval_sources.0.path={path}"])
        if not out:
            folder, _ = dense_folder(recipe.model.path, dtype="float32")
            tok = load_tokenizer(folder)
            fmt = chat_format(tok)
        rows = tokenise(load_split(recipe.data, "orpo").train, tok, fmt, "orpo", limits_of(recipe)).rows
        lengths = [pair_length(r) for r in rows]
        batch = int(recipe.trainer["per_device_train_batch_size"])
        accum = int(recipe.trainer.get("gradient_accumulation_steps", 1))
        g = torch.Generator().manual_seed(0)
        shuffled = torch.randperm(len(lengths), generator=g).tolist()
        # the Trainer groups by its train batch x gradient accumulation (transformers 5)
        grouped = get_length_grouped_indices(lengths, batch * accum, generator=g)
        res = {
            "pairs": Path(path).as_posix(),
            "rows": len(lengths),
            "batch_pairs": batch,
            "padding_random": round(padding_share(lengths, shuffled, batch), 4),
            "padding_grouped": round(padding_share(lengths, grouped, batch), 4),
        }
        # padded tokens grouped / random: what the forward and backward passes process
        res["padded_tokens_ratio"] = round((1 - res["padding_random"]) / (1 - res["padding_grouped"]), 3)
        out.append(res)
        print(json.dumps(res), flush=True)
    if args.json:
        Path(args.json).write_text(portable_text(json.dumps(out, indent=1)) + "\n")


if __name__ == "__main__":
    main()
