"""One training run from a recipe: data -> tokens -> TRL trainer -> run folder.

The run folder (``recipe.output_dir``) holds the adapter or the full weights, the tokenizer,
``recipe.yaml`` (resolved, overrides applied), ``metrics.json`` and ``run.json`` (what the
weights are, data hashes, counts, metrics, versions); ``checkpoints/<recipe digest>/`` holds
TRL's intermediate checkpoints, from which an interrupted run resumes. ``run.json`` is written last, with
``status: complete``: a folder without it is an unfinished run. Re-running a finished recipe
is a no-op; a different recipe into the same folder is refused unless forced.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.fileio import write_text_atomic
from matsql.train import data as data_mod
from matsql.train.config import Recipe, RecipeError, did_you_mean
from matsql.train.encoding import ChatFormat, Limits, chat_format, encode_pair, encode_sft
from matsql.train.modeling import RUN_FILE, Start


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
    lim = recipe.limits
    return Limits(lim.max_length, lim.max_prompt_length, lim.max_completion_length)


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


def trainer_kwargs(recipe: Recipe, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for SFTConfig / ORPOConfig: the recipe's ``trainer:`` mapping unchanged,
    plus what matsql decides itself. The one place where matsql touches TRL's arguments:

    - ``output_dir``: TRL's checkpoints, under the recipe's digest (:func:`checkpoint_dir`);
    - ``max_length`` (and ORPO's ``max_completion_length``): the recipe's ``limits:``, by which
      matsql already cut the rows;
    - ``bf16: auto``: bf16 where the GPU supports it;
    - without eval rows: ``eval_strategy: no`` and no ``eval_steps``; with them, ``eval_strategy``
      defaults to ``steps`` when ``eval_steps`` is set, else ``epoch``;
    - defaults: ``data_seed`` = ``seed``; ``ddp_find_unused_parameters: false`` (LoRA and
      gradient checkpointing under DDP).
    """
    from matsql.train.modeling import bf16_available

    kw = dict(recipe.trainer)
    kw["output_dir"] = checkpoint_dir(recipe)
    kw["max_length"] = recipe.limits.max_length
    if recipe.method == "orpo":
        kw["max_completion_length"] = recipe.limits.max_completion_length
    if kw.get("bf16") == "auto":
        kw["bf16"] = bf16_available()
    if "seed" in kw:
        kw.setdefault("data_seed", kw["seed"])
    kw.setdefault("ddp_find_unused_parameters", False)
    if has_eval:
        kw.setdefault("eval_strategy", "steps" if kw.get("eval_steps") else "epoch")
    else:
        kw["eval_strategy"] = "no"
        kw.pop("eval_steps", None)
    return kw


def trainer_config(recipe: Recipe, has_eval: bool, *, cpu_check: bool = False) -> Any:
    """TRL's SFTConfig / ORPOConfig for the recipe; TRL validates the arguments and its errors
    come back as a :class:`RecipeError` naming the recipe file. ``cpu_check``: build it as if
    training on this machine's CPU when it has no GPU (``--dry-run`` of a bf16 GPU recipe)."""
    cls = _method_module(recipe.method).CONFIG
    kw = trainer_kwargs(recipe, has_eval)
    if cpu_check and not _cuda():
        kw["use_cpu"] = True
    elif kw.get("use_liger_kernel"):
        _check_liger(recipe)
    try:
        return cls(**kw)
    except TypeError as e:  # an argument TRL does not know
        bad = re.search(r"keyword argument '(\w+)'", str(e))
        hint = did_you_mean(bad.group(1), [f.name for f in dataclasses.fields(cls)]) if bad else ""
        raise RecipeError(f"{recipe.source}: trainer: {e}{hint}") from None
    except ValueError as e:  # a value TRL refuses
        raise RecipeError(f"{recipe.source}: trainer: {cls.__name__}: {e}") from None


def _check_liger(recipe: Recipe) -> None:
    """The qwen0.5b recipes turn on Liger's Triton kernels (session 13: 1.38x on an H100). Say so
    before the model loads, naming the recipe, instead of transformers' error at trainer start."""
    import importlib.util

    if not _cuda():
        raise RecipeError(
            f"{recipe.source}: trainer.use_liger_kernel needs a CUDA GPU (Liger's kernels are Triton); "
            "to train on this machine pass --set trainer.use_liger_kernel=false"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise RecipeError(
            f"{recipe.source}: trainer.use_liger_kernel needs the liger-kernel package "
            "(pip install 'matsql[gpu]'), or pass --set trainer.use_liger_kernel=false"
        )


def _eval_expected(recipe: Recipe) -> bool:
    """Whether the recipe asks for eval rows (whether it gets any is known once the data is read)."""
    return bool(recipe.data.eval_sources or recipe.data.eval_fraction)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def effective_batch_size(args: Any, num_processes: int) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * num_processes


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
    from matsql.train.modeling import has_tokenizer, load_tokenizer

    notes = []
    spec = recipe.init_from or recipe.model.path
    if recipe.init_from and not Path(recipe.init_from).is_dir():
        # checking a later stage before the earlier one ran: same tokenizer as the base model
        notes.append(
            f"init_from {recipe.init_from} does not exist yet; tokenizer of {recipe.model.path} used"
        )
        spec = recipe.model.path
    elif recipe.init_from and not has_tokenizer(recipe.init_from):
        spec = recipe.model.path  # as build_model does: the base model's tokenizer
    trainer_config(recipe, _eval_expected(recipe), cpu_check=True)  # TRL's verdict before the data is read
    tok = load_tokenizer(spec)
    prep = prepare(recipe, tok)
    args = trainer_config(recipe, bool(prep.eval.rows), cpu_check=True)
    if getattr(args, "use_cpu", False) and "use_cpu" not in recipe.trainer:
        notes.append("no GPU here: TRL's arguments were checked as for a CPU run (use_cpu)")
    eff = effective_batch_size(args, num_processes)
    steps_per_epoch = -(-len(prep.train.rows) // eff)
    total = args.max_steps if args.max_steps > 0 else int(steps_per_epoch * args.num_train_epochs)
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
        "trainer_args": trainer_kwargs(recipe, bool(prep.eval.rows)),  # what TRL's config receives
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
    # TRL checks the trainer arguments before a model is loaded (rebuilt below once the eval rows are known)
    checked = trainer_config(recipe, _eval_expected(recipe))
    set_seed(checked.seed)  # LoRA initialisation is random
    started = time.time()
    model, tok, peft_cfg, start = build_model(recipe)
    prep = prepare(recipe, tok)
    if not prep.train.rows:
        return _save_untrained(recipe, model, tok, peft_cfg, start, prep, started)
    args = trainer_config(recipe, bool(prep.eval.rows))
    if args.gradient_checkpointing and (peft_cfg is not None or start.continue_adapter):
        model.enable_input_require_grads()
    extra = {"nll_scope": recipe.nll_scope} if recipe.method == "orpo" else {}
    trainer = mod.make_trainer(model, tok, peft_cfg, args, prep.train.rows, prep.eval.rows, **extra)
    trainer.add_callback(NonFiniteGuard())
    eval_before = trainer.evaluate() if prep.eval.rows else {}
    result = trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoint_dir(recipe)))
    eval_after = trainer.evaluate() if prep.eval.rows else {}
    trainer.save_model(recipe.output_dir)
    info = _write_outputs(recipe, trainer, tok, prep, start, result, eval_before, eval_after, started)
    trainer.accelerator.wait_for_everyone()  # no rank leaves (and tears down NCCL) while rank 0 writes
    return info


def peak_gpu_memory_gib() -> float | None:
    """The most GPU memory PyTorch held for tensors in this process (GiB), or None without a GPU:
    what a stage needs of a card it shares (session 12: SFT without activation checkpointing
    ran out of memory at half an H100)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _write_outputs(recipe, trainer, tok, prep, start, result, eval_before, eval_after, started):
    """Rank 0 writes tokenizer, merged weights, metrics.json, recipe.yaml and run.json (last)."""
    if not trainer.is_world_process_zero():
        return {}
    out = Path(recipe.output_dir)
    tok.save_pretrained(out)
    is_adapter = hasattr(trainer.model, "peft_config")
    merged = is_adapter and recipe.peft is not None and recipe.peft.save_merged
    if merged:
        model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        model.save_pretrained(out / "merged")
        tok.save_pretrained(out / "merged")
    metrics = {"train": result.metrics, "eval_before": eval_before, "eval": eval_after}
    _write_json(out / "metrics.json", {**metrics, "log_history": trainer.state.log_history})
    world = trainer.args.world_size
    trained = {
        "train_tokens": prep.train.summary(),
        "eval_tokens": prep.eval.summary(),
        "world_size": world,
        "effective_batch_size": effective_batch_size(trainer.args, world),
        "peak_gpu_memory_gib": peak_gpu_memory_gib(),
        "metrics": metrics,
    }
    return write_run(
        recipe,
        "complete",
        is_adapter,
        start,
        prep,
        started,
        merged_dir=str(out / "merged") if merged else None,
        trained=trained,
    )


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
    info = write_run(recipe, "no_data", hasattr(model, "peft_config"), start, prep, started)
    print(
        f"warning: {recipe.name}: no training rows; saved the starting model unchanged to {out}",
        file=sys.stderr,
    )
    return info


def write_run(
    recipe: Recipe,
    status: str,
    is_adapter: bool,
    start: Start,
    prep: Prepared,
    started: float,
    *,
    merged_dir: str | None = None,
    trained: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The one writer of a run folder's ``recipe.yaml`` (resolved) and ``run.json`` (last: a
    folder without it is an unfinished run); returns run.json's content. ``trained``: token
    counts, batch arithmetic and metrics of a run that trained (``status: complete``)."""
    out = Path(recipe.output_dir)
    write_text_atomic(out / "recipe.yaml", recipe.to_yaml())
    info = {
        "status": status,
        "method": recipe.method,
        "name": recipe.name,
        "agent": recipe.agent,
        "kind": "adapter" if is_adapter else "full",
        "base_model": start.base_model,
        "init_from": str(Path(recipe.init_from).resolve()) if recipe.init_from else None,
        "init_adapter": "continued" if start.continue_adapter else ("merged" if start.adapter else None),
        "merged_dir": merged_dir,
        "recipe_sha256": recipe.sha256(),
        "data": [data_mod.fingerprint(s.path) for s in [*recipe.data.sources, *recipe.data.eval_sources]],
        "data_counts": prep.sources,
        **(trained or {"metrics": {}}),
        "versions": _versions(),
        "seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(out / RUN_FILE, info)
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
