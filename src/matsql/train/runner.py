"""One training run from a recipe: data -> tokens -> TRL trainer -> run folder.

The run folder (``recipe.output_dir``) holds the adapter or the full weights, the tokenizer,
``recipe.yaml`` (resolved, overrides applied), ``metrics.json`` and ``run.json`` (what the
weights are, data hashes, counts, metrics, versions); ``checkpoints/<recipe digest>/`` holds
TRL's intermediate checkpoints, from which an interrupted run resumes. ``run.json`` is written last, with
``status: complete``: a folder without it is an unfinished run. Re-running a finished recipe
is a no-op; a different recipe into the same folder is refused unless forced.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.fileio import write_text_atomic
from matsql.train import data as data_mod
from matsql.train.config import Recipe, RecipeError
from matsql.train.encoding import ChatFormat, Limits, chat_format, encode_pair, encode_sft
from matsql.train.modeling import RUN_FILE


@dataclass
class Tokenised:
    rows: list[dict[str, Any]]
    dropped: dict[str, int] = field(default_factory=dict)
    prompts_cut: int = 0
    prompt_lengths: list[int] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def stats(xs: list[int]) -> dict[str, float]:
            return {"median": statistics.median(xs), "max": max(xs)} if xs else {}

        return {
            "rows": len(self.rows),
            "dropped": dict(self.dropped),
            "prompts_cut": self.prompts_cut,
            "prompt_tokens": stats(self.prompt_lengths),
            "completion_tokens": stats(self.completion_lengths),
        }


def limits_of(recipe: Recipe) -> Limits:
    t = recipe.trainer
    return Limits(t.max_length, t.max_prompt_length, t.max_completion_length)


def tokenise(
    rows: list[dict[str, Any]], tokenizer: Any, fmt: ChatFormat, method: str, limits: Limits
) -> Tokenised:
    out = Tokenised([])
    for r in rows:
        if method == "orpo":
            enc = encode_pair(tokenizer, fmt, r["messages"], r["prefix"], r["chosen"], r["rejected"], limits)
        else:
            enc = encode_sft(tokenizer, fmt, r["messages"], r["prefix"], r["completion"], limits)
        if enc.row is None:
            out.dropped[enc.dropped or "?"] = out.dropped.get(enc.dropped or "?", 0) + 1
            continue
        out.rows.append(enc.row)
        out.prompts_cut += enc.prompt_cut > 0
        if method == "orpo":
            p = len(enc.row["prompt_input_ids"])
            out.prompt_lengths.append(p)
            out.completion_lengths.append(
                max(len(enc.row["chosen_input_ids"]), len(enc.row["rejected_input_ids"])) - p
            )
        else:
            n_completion = sum(x != -100 for x in enc.row["labels"])
            out.prompt_lengths.append(len(enc.row["input_ids"]) - n_completion)
            out.completion_lengths.append(n_completion)
    return out


def effective_batch_size(recipe: Recipe, num_processes: int) -> int:
    t = recipe.trainer
    return t.per_device_train_batch_size * t.gradient_accumulation_steps * num_processes


def trainer_args(recipe: Recipe, method: str, has_eval: bool, valid: set[str]) -> dict[str, Any]:
    """Keyword arguments for SFTConfig / ORPOConfig; unknown recipe keys are errors."""
    from matsql.train.modeling import bf16_available

    t = recipe.trainer
    kw: dict[str, Any] = {
        "output_dir": checkpoint_dir(recipe),
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": t.max_length,
        "bf16": bf16_available() if t.bf16 == "auto" else t.bf16,
        "gradient_checkpointing": t.gradient_checkpointing,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_steps": t.logging_steps,
        "lr_scheduler_type": t.lr_scheduler_type,
        "warmup_steps": t.warmup_steps,
        "save_strategy": t.save_strategy,
        "report_to": t.report_to,
        "ddp_find_unused_parameters": False,  # LoRA + checkpointing under DDP
    }
    if method == "orpo":
        kw["beta"] = t.beta
        kw["max_completion_length"] = t.max_completion_length
    if has_eval:
        kw["eval_strategy"] = "steps" if t.eval_steps else "epoch"
        if t.eval_steps:
            kw["eval_steps"] = t.eval_steps
    else:
        kw["eval_strategy"] = "no"
    for k, v in t.extras().items():
        kw[k] = v
    unknown = sorted(k for k in kw if k not in valid)
    if unknown:
        raise RecipeError(f"trainer keys not known to TRL's {method.upper()} config: {', '.join(unknown)}")
    return kw


@dataclass
class Prepared:
    train: Tokenised
    eval: Tokenised
    sources: list[dict[str, Any]]


def prepare(recipe: Recipe, tokenizer: Any) -> Prepared:
    split = data_mod.load_split(recipe.data, recipe.method)
    fmt = chat_format(tokenizer)
    limits = limits_of(recipe)
    train = tokenise(split.train, tokenizer, fmt, recipe.method, limits)
    if not train.rows and len(split.train):  # rows exist but none fits; no rows at all is no_data
        raise RecipeError(
            f"recipe {recipe.name or recipe.output_dir}: no training row fits max_length={limits.max_length}"
        )
    return Prepared(train, tokenise(split.eval, tokenizer, fmt, recipe.method, limits), split.per_source)


def dry_run(recipe: Recipe, num_processes: int = 1, n_show: int = 1) -> dict[str, Any]:
    """Validate everything short of training: recipe, trainer keys, data, tokenisation, batch
    arithmetic. Loads only the tokenizer, so it runs on a laptop CPU."""
    from matsql.train.modeling import load_tokenizer

    mod = _method_module(recipe.method)
    notes = []
    spec = recipe.init_from or recipe.model.path
    if recipe.init_from and not Path(recipe.init_from).is_dir():
        # checking a later stage before the earlier one ran: same tokenizer as the base model
        notes.append(
            f"init_from {recipe.init_from} does not exist yet; tokenizer of {recipe.model.path} used"
        )
        spec = recipe.model.path
    tok = load_tokenizer(spec)
    prep = prepare(recipe, tok)
    trainer_args(recipe, recipe.method, bool(prep.eval.rows), mod.config_fields())
    eff = effective_batch_size(recipe, num_processes)
    steps_per_epoch = -(-len(prep.train.rows) // eff)
    total = (
        recipe.trainer.max_steps
        if recipe.trainer.max_steps > 0
        else int(steps_per_epoch * recipe.trainer.num_train_epochs)
    )
    examples = []
    for row in prep.train.rows[:n_show]:
        ids = row["input_ids"] if recipe.method == "sft" else row["chosen_input_ids"]
        labels = row["labels"] if recipe.method == "sft" else row["chosen_labels"]
        examples.append(
            {
                "prompt_tail": tok.decode(
                    [i for i, lab in zip(ids, labels, strict=True) if lab == -100][-40:]
                ),
                "completion": tok.decode([lab for lab in labels if lab != -100]),
            }
        )
    return {
        "recipe": recipe.name,
        "method": recipe.method,
        "model": spec,
        "num_processes": num_processes,
        "effective_batch_size": eff,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "train": prep.train.summary(),
        "eval": prep.eval.summary(),
        "sources": prep.sources,
        "examples": examples,
        "notes": notes,
    }


def _method_module(method: str):
    if method == "sft":
        from matsql.train import sft as mod
    else:
        from matsql.train import orpo as mod
    return mod


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("matsql", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def existing_run(recipe: Recipe) -> dict[str, Any] | None:
    path = Path(recipe.output_dir) / RUN_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def run_training(recipe: Recipe, *, force: bool = False) -> dict[str, Any]:
    """Train and write the run folder; returns run.json's content."""
    done = existing_run(recipe)
    if done and done.get("status") == "complete" and not force:
        if done.get("recipe_sha256") == recipe.sha256():
            return done | {"skipped": True}
        raise RecipeError(
            f"{recipe.output_dir} holds a finished run of a different recipe; pass --force to overwrite it"
        )
    from transformers import set_seed

    from matsql.gpu import apply_memory_share
    from matsql.train.guards import NonFiniteGuard, disable_cudnn_attention
    from matsql.train.modeling import build_model

    disable_cudnn_attention()
    apply_memory_share()  # this process's share of a card that rollouts share (matsql.gpu)
    mod = _method_module(recipe.method)
    set_seed(recipe.trainer.seed)  # LoRA initialisation is random
    started = time.time()
    model, tok, peft_cfg, start = build_model(recipe)
    prep = prepare(recipe, tok)
    if not prep.train.rows:
        return _save_untrained(recipe, model, tok, peft_cfg, start, prep, started)
    args = trainer_args(recipe, recipe.method, bool(prep.eval.rows), mod.config_fields())
    if recipe.trainer.gradient_checkpointing and (peft_cfg is not None or start.continue_adapter):
        model.enable_input_require_grads()
    extra = {"nll_scope": recipe.trainer.nll_scope} if recipe.method == "orpo" else {}
    trainer = mod.make_trainer(model, tok, peft_cfg, args, prep.train.rows, prep.eval.rows, **extra)
    trainer.add_callback(NonFiniteGuard())
    eval_before = trainer.evaluate() if prep.eval.rows else {}
    result = trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoint_dir(recipe)))
    eval_after = trainer.evaluate() if prep.eval.rows else {}
    trainer.save_model(recipe.output_dir)
    is_adapter = hasattr(trainer.model, "peft_config")
    info = _write_outputs(
        recipe, trainer, tok, prep, start, result, eval_before, eval_after, started, is_adapter
    )
    trainer.accelerator.wait_for_everyone()  # no rank leaves (and tears down NCCL) while rank 0 writes
    return info


def _write_outputs(recipe, trainer, tok, prep, start, result, eval_before, eval_after, started, is_adapter):
    """Rank 0 writes tokenizer, merged weights, metrics.json, recipe.yaml and run.json (last)."""
    if not trainer.is_world_process_zero():
        return {}
    out = Path(recipe.output_dir)
    tok.save_pretrained(out)
    if is_adapter and recipe.peft is not None and recipe.peft.save_merged:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    metrics = {
        "train": result.metrics,
        "eval_before": eval_before,
        "eval": eval_after,
        "log_history": trainer.state.log_history,
    }
    _write_json(out / "metrics.json", metrics)
    (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    world = trainer.args.world_size
    info = {
        "status": "complete",
        "method": recipe.method,
        "name": recipe.name,
        "agent": recipe.agent,
        "kind": "adapter" if is_adapter else "full",
        "base_model": start.base_model,
        "init_from": str(Path(recipe.init_from).resolve()) if recipe.init_from else None,
        "init_adapter": "continued" if start.continue_adapter else ("merged" if start.adapter else None),
        "merged_dir": str(out / "merged") if is_adapter and recipe.peft and recipe.peft.save_merged else None,
        "recipe_sha256": recipe.sha256(),
        "data": [data_mod.fingerprint(s.path) for s in [*recipe.data.sources, *recipe.data.eval_sources]],
        "data_counts": prep.sources,
        "train_tokens": prep.train.summary(),
        "eval_tokens": prep.eval.summary(),
        "world_size": world,
        "effective_batch_size": effective_batch_size(recipe, world),
        "metrics": {"train": result.metrics, "eval_before": eval_before, "eval": eval_after},
        "versions": _versions(),
        "seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / RUN_FILE, info)
    return info


def _save_untrained(recipe, model, tok, peft_cfg, start, prep, started) -> dict[str, Any]:
    """No training rows (e.g. a weak planner gave the selector no question with a correct
    option, or a labelling mode gave no pair): save the starting point unchanged, so later
    stages still find a model, and say so in run.json (``status: no_data``) and on stderr."""
    import sys

    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if peft_cfg is not None and not hasattr(model, "peft_config"):
        from peft import get_peft_model

        model = get_peft_model(model, peft_cfg)  # LoRA B starts at zero: identical to the base
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    info = {
        "status": "no_data",
        "method": recipe.method,
        "name": recipe.name,
        "agent": recipe.agent,
        "kind": "adapter" if hasattr(model, "peft_config") else "full",
        "base_model": start.base_model,
        "init_from": str(Path(recipe.init_from).resolve()) if recipe.init_from else None,
        "recipe_sha256": recipe.sha256(),
        "data": [data_mod.fingerprint(s.path) for s in [*recipe.data.sources, *recipe.data.eval_sources]],
        "data_counts": prep.sources,
        "metrics": {},
        "versions": _versions(),
        "seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / RUN_FILE, info)
    print(
        f"warning: {recipe.name}: no training rows; saved the starting model unchanged to {out}",
        file=sys.stderr,
    )
    return info


def checkpoint_dir(recipe: Recipe) -> str:
    """Intermediate checkpoints live under the recipe's digest, so an interrupted run resumes
    only from checkpoints of the same recipe (never from a forced replacement's)."""
    return str(Path(recipe.output_dir) / "checkpoints" / recipe.sha256()[:12])


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
