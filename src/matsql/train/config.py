"""Training recipes: versioned YAML files validated by pydantic (alignment-handbook style).

A recipe names everything a run depends on (model, init run, PEFT, data mixture, trainer
arguments, output folder), so the resolved recipe saved next to the weights is enough to
reproduce it. Command-line ``key=value`` overrides are applied to the raw mapping *before*
validation, so an override is checked exactly like a recipe key.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

RECIPE_VERSION = 1
Method = Literal["sft", "orpo"]

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    # local folder | .gguf file | hub id | alias ("qwen2.5-coder-0.5b-instruct"), resolved by matsql.models
    path: str
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: str | None = None


class PeftSpec(_Strict):
    """LoRA settings; ``peft: null`` in a recipe means a full fine-tune."""

    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    save_merged: bool = False  # also write merged full weights to <output_dir>/merged


class Source(_Strict):
    """One data source: a ``datasets`` folder (``save_to_disk``) or a JSONL file."""

    path: str
    weight: float = Field(1.0, gt=0.0)  # fraction of the source's rows to use; > 1 repeats rows
    split: str = "train"  # split of a DatasetDict folder; ignored for a JSONL file


class DataSpec(_Strict):
    sources: list[Source] = Field(min_length=1)
    eval_sources: list[Source] = Field(default_factory=list)
    # without eval_sources: hold out this fraction of *questions* (rows grouped by question_id, so
    # pairs of one question never straddle train and eval)
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0


class TrainerSpec(BaseModel):
    """Trainer arguments. Named fields have matsql defaults; any other key is passed to TRL's
    SFTConfig / ORPOConfig unchanged (checked against that class when the run is built)."""

    model_config = ConfigDict(extra="allow")

    learning_rate: float = 1e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = Field(4, gt=0)
    per_device_eval_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_length: int = Field(1536, gt=0)  # prompt + completion tokens
    max_prompt_length: int | None = None  # prompts are cut from the left of the user turn
    max_completion_length: int | None = None  # longer completions are dropped, never cut
    beta: float = Field(0.1, ge=0.0)  # ORPO's lambda (TRL: beta)
    # ORPO's NLL term: over the chosen completion only (as MATS trained) or TRL's whole sequence
    nll_scope: Literal["completion", "sequence"] = "completion"
    bf16: bool | Literal["auto"] = "auto"
    gradient_checkpointing: bool = True
    seed: int = 0
    eval_steps: int | None = None
    logging_steps: int = 10
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.03  # < 1: a fraction of all steps (transformers 5)
    save_strategy: str = "no"
    report_to: str | list[str] = "none"

    @model_validator(mode="before")
    @classmethod
    def _strategies_are_strings(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted `save_strategy: no` as False
        if isinstance(data, dict):
            return {k: ("no" if k.endswith("_strategy") and v is False else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _coerce_extras(self) -> TrainerSpec:
        # YAML 1.1 reads "1e-5" as a string; pass numbers to TRL as numbers
        for k, v in (self.model_extra or {}).items():
            self.model_extra[k] = _coerce_scalar(v)
        return self

    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Recipe(_Strict):
    version: int = RECIPE_VERSION
    name: str = ""
    method: Method
    agent: str | None = None  # informational: which agent the data trains
    model: ModelSpec
    init_from: str | None = None  # a previous run folder (its run.json says adapter or full weights)
    peft: PeftSpec | None = Field(default_factory=PeftSpec)
    data: DataSpec
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    output_dir: str

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(
                f"recipe version {v} is not supported (this matsql reads version {RECIPE_VERSION})"
            )
        return v

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def sha256(self) -> str:
        """Digest of the resolved recipe: equal digests = the same run."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _coerce_scalar(v: Any) -> Any:
    if isinstance(v, str) and _FLOAT.match(v.strip()):
        f = float(v)
        return int(f) if re.fullmatch(r"[+-]?\d+", v.strip()) else f
    return v


_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars/lists (``null``, ``true``, ``[a, b]``) and numbers
    written as ``1e-5`` (which YAML 1.1 would leave a string). ``no``/``yes``/``on``/``off``
    stay strings (``save_strategy=no``); booleans are ``true``/``false``."""
    if text.strip().lower() in _YAML11_BOOLS:
        return text.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    return _coerce_scalar(value)


def parse_overrides(items: list[str]) -> list[tuple[list[str], Any]]:
    """``["trainer.learning_rate=1e-5", "peft=null"]`` -> ``[(["trainer", "learning_rate"], 1e-05), ...]``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(
                f"override {item!r} is not of the form key=value (e.g. trainer.learning_rate=1e-5)"
            )
        out.append((key.strip().split("."), parse_value(value)))
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (list items by index: ``data.sources.0.weight``).

    Missing intermediate mappings are created; a bad path is an error naming the key."""
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for path, value in overrides:
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"override key {'.'.join(path)!r}: {where!r} is not a valid list index")
                node = node[int(part)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise RecipeError(f"override key {'.'.join(path)!r}: {where!r} is not a mapping")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"override key {'.'.join(path)!r}: {last!r} is not a valid list index")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"override key {'.'.join(path)!r}: parent is not a mapping")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file, apply ``key=value`` overrides, validate. Errors name the file and key."""
    from matsql.fileio import read_yaml

    path = Path(path)
    raw = read_yaml(path, "recipe", RecipeError)
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, parse_overrides(overrides or []))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key{_did_you_mean(err['loc'])}")
            else:
                problems.append(f"{key}: {err['msg']}")
        if len(problems) == 1:
            raise RecipeError(f"{path}: invalid recipe: {problems[0]}") from None
        raise RecipeError("\n".join([f"{path}: invalid recipe", *(f"  {x}" for x in problems)])) from None
    typos = _trainer_typos(recipe.trainer)
    if typos:
        raise RecipeError(f"{path}: " + "; ".join(typos))
    return recipe


_MODELS: dict[str, type[BaseModel]] = {
    "": Recipe,
    "model": ModelSpec,
    "peft": PeftSpec,
    "data": DataSpec,
    "trainer": TrainerSpec,
}


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    import difflib

    parent = "data" if len(loc) > 1 and loc[0] == "data" and loc[1] in ("sources", "eval_sources") else None
    model = Source if parent else _MODELS.get(".".join(str(x) for x in loc[:-1]))
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), sorted(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _trainer_typos(trainer: TrainerSpec) -> list[str]:
    """Extra trainer keys go to TRL unchanged (checked when the run is built), but a key within a
    letter or two of one of matsql's named keys (``learning_rat``) is a typo, not a TRL argument."""
    import difflib

    named = sorted(TrainerSpec.model_fields)
    out = []
    for key in trainer.extras():
        close = difflib.get_close_matches(key, named, n=1, cutoff=0.88)
        if close:
            out.append(f"trainer.{key}: unknown key (did you mean {close[0]!r}?)")
    return out
