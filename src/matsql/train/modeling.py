"""Model and tokenizer for a run: base model, ``init_from`` chaining, LoRA, reloading a run.

A run folder holds either a LoRA adapter (``run.json: kind = "adapter"``, with the base model it
applies to) or full weights (``kind = "full"``). ``init_from`` continues from such a folder:

- adapter run + LoRA recipe with the same LoRA shape: the adapter itself is trained further
  (iter2 starts exactly at iter1's weights);
- adapter run + a different LoRA shape or a full fine-tune: the adapter is merged into its
  base first, then the new LoRA (or all weights) is trained;
- full run: its weights are the base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsql.train.config import PeftSpec, Recipe

RUN_FILE = "run.json"


@dataclass
class Start:
    """Where a run starts: what to load and how the trainer should wrap it."""

    base_model: str  # spec of the weights the output adapter applies to (or the full-FT start)
    adapter: str | None  # an adapter folder loaded on top of base_model
    continue_adapter: bool  # train that adapter further (else merge it first)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"init_from: {path} not found (is {run_dir} a finished matsql training run?)"
        ) from None
    # no_data: a finished run that had nothing to learn and saved its starting point
    if info.get("status") not in ("complete", "no_data") or info.get("kind") not in ("adapter", "full"):
        raise ValueError(
            f"{path}: the run did not finish (status={info.get('status')!r}); cannot start from it"
        )
    return info


def same_lora(a: dict[str, Any], b: PeftSpec) -> bool:
    targets = a.get("target_modules")
    want = b.target_modules if isinstance(b.target_modules, str) else sorted(b.target_modules)
    have = targets if isinstance(targets, str) else sorted(targets or [])
    return a.get("r") == b.r and a.get("lora_alpha") == b.alpha and have == want


def plan_start(recipe: Recipe) -> Start:
    """Pure decision of what to load, from the recipe and the init run's run.json."""
    if not recipe.init_from:
        local = Path(recipe.model.path)
        return Start(str(local.resolve()) if local.exists() else recipe.model.path, None, False)
    info = read_run(recipe.init_from)
    init_dir = str(Path(recipe.init_from).resolve())
    if info["kind"] == "full":
        return Start(init_dir, None, False)
    adapter_cfg = json.loads((Path(recipe.init_from) / "adapter_config.json").read_text(encoding="utf-8"))
    cont = recipe.peft is not None and same_lora(adapter_cfg, recipe.peft)
    return Start(info["base_model"], init_dir, cont)


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if bf16_available() else torch.float32
    return getattr(torch, name)


def bf16_available() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a run folder kept its tokenizer. An adapter folder copied without it (the demo's
    prepared planner, fixer and selector) trains on with its base model's: an adapter does not
    change the vocabulary."""
    return (Path(folder) / "tokenizer_config.json").is_file()


def load_tokenizer(spec: str) -> Any:
    """Tokenizer only (for --dry-run): a run folder's own (adapter runs have no config.json),
    else via matsql.models (local folder, alias, .gguf, hub id)."""
    p = Path(spec)
    if p.is_dir() and has_tokenizer(p) and not (p / "config.json").is_file():
        from transformers import AutoTokenizer

        return _with_pad(AutoTokenizer.from_pretrained(str(p)))
    from matsql.models import load_tokenizer as _load

    return _with_pad(_load(spec))


def load_base(spec: str, dtype: str, attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Base model on CPU (the Trainer places it: one copy per process under accelerate), via
    ``matsql.models.load_model_and_tokenizer``, which knows the offline copies of aliases."""
    import torch

    from matsql.models import load_model_and_tokenizer

    name = (
        "bfloat16" if torch_dtype(dtype) == torch.bfloat16 else str(torch_dtype(dtype)).removeprefix("torch.")
    )
    model, tok = load_model_and_tokenizer(spec, dtype=name, device="cpu")
    if attn_implementation:
        model.set_attn_implementation(attn_implementation)
    return model, _with_pad(tok)


def _with_pad(tok: Any) -> Any:
    """eos from the chat template (a run folder saved under transformers 5.17 says
    ``<|im_start|>``), pad = eos when missing: ``matsql.models.loading.fix_special_tokens``."""
    from matsql.models.loading import fix_special_tokens

    return fix_special_tokens(tok)


def lora_config(spec: PeftSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
        bias="none",
    )


def build_model(recipe: Recipe) -> tuple[Any, Any, Any, Start]:
    """(model, tokenizer, peft_config for the trainer or None, start). The model is a PeftModel
    when an init adapter is continued; then peft_config is None (the trainer must not wrap it)."""
    start = plan_start(recipe)
    model, tok = load_base(start.base_model, recipe.model.dtype, recipe.model.attn_implementation)
    if recipe.init_from and has_tokenizer(recipe.init_from):  # the tokenizer the init run trained with
        from transformers import AutoTokenizer

        tok = _with_pad(AutoTokenizer.from_pretrained(recipe.init_from))
    peft_cfg = lora_config(recipe.peft) if recipe.peft is not None else None
    if start.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start.adapter, is_trainable=start.continue_adapter)
        if start.continue_adapter:
            peft_cfg = None
        else:
            model = model.merge_and_unload()
    return model, tok, peft_cfg, start


def load_run(run_dir: str | Path, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """A finished run as (model, tokenizer), ready to generate: full weights, or base + adapter."""
    from matsql.models import load_model_and_tokenizer

    info = read_run(run_dir)
    if info["kind"] == "full":
        return load_model_and_tokenizer(str(run_dir), dtype=dtype, device=device)
    return load_model_and_tokenizer(info["base_model"], dtype=dtype, device=device, adapter=str(run_dir))
