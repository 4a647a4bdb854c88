"""Training recipes: versioned YAML files (alignment-handbook style).

A recipe is matsql's own keys, validated here by pydantic (``extra="forbid"``): the model, the
run it starts from, LoRA, the data mixture, matsql's token limits, ORPO's NLL scope and the output
folder; plus a ``trainer:`` mapping passed unchanged to TRL's ``SFTConfig`` / ``ORPOConfig``,
which validates it (:func:`matsql.train.runner.trainer_config` names the recipe file in TRL's
errors). matsql keeps no second list of TRL's fields.

``extends: base-sft.yaml`` (relative to the file) merges the recipe over a base recipe, itself
possibly extending another: mappings merge key by key, anything else (lists, scalars, ``null``)
replaces the base's value. Command-line ``key=value`` overrides apply to the merged mapping
*before* validation, so an override is checked exactly like a recipe key. The resolved recipe
(saved next to the weights) has no ``extends`` and is enough to reproduce the run; its digest
is the run's identity, so moving a setting between a recipe and its base changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

# 2: TRL's arguments pass through `trainer:` unchanged; token limits moved to `limits:`, ORPO's
# NLL scope to `nll_scope:`; `extends:`. Version 1 files (every key written out) are refused.
RECIPE_VERSION = 2
Method = Literal["sft", "orpo"]

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

# trainer keys matsql sets itself (runner.trainer_kwargs): where to write them instead
OWNED_TRAINER_KEYS = {
    "output_dir": "output_dir (top level; TRL's checkpoints go to <output_dir>/checkpoints/<digest>)",
    "max_length": "limits.max_length (matsql tokenises the rows and passes the limit to TRL)",
    "max_prompt_length": "limits.max_prompt_length (matsql tokenises the rows)",
    "max_completion_length": "limits.max_completion_length (matsql tokenises the rows)",
    "nll_scope": "nll_scope (top level: matsql's ORPO loss, not a TRL argument)",
}


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


class LimitsSpec(_Strict):
    """matsql's tokenisation (:mod:`matsql.train.encoding`), not TRL's: TRL gets rows already cut.
    ``max_length`` is also passed to TRL's config (and ``max_completion_length`` to ORPO's)."""

    max_length: int = Field(1536, gt=0)  # prompt + completion tokens
    max_prompt_length: int | None = Field(None, gt=0)  # prompts are cut from the left of the user turn
    max_completion_length: int | None = Field(None, gt=0)  # longer completions are dropped, never cut


class Recipe(_Strict):
    version: int = RECIPE_VERSION
    name: str = ""
    method: Method
    agent: str | None = None  # informational: which agent the data trains
    model: ModelSpec
    init_from: str | None = None  # a previous run folder (its run.json says adapter or full weights)
    peft: PeftSpec | None = Field(default_factory=PeftSpec)
    data: DataSpec
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    # ORPO's NLL term: over the chosen completion only (as MATS trained) or TRL's whole sequence;
    # ORPO recipes get "completion" when unset, SFT recipes may not set it
    nll_scope: Literal["completion", "sequence"] | None = None
    # passed unchanged to TRL's SFTConfig / ORPOConfig (which checks it); `bf16: auto` is the one
    # value matsql translates (bf16 where the GPU supports it)
    trainer: dict[str, Any] = Field(default_factory=dict)
    output_dir: str
    _source: str | None = PrivateAttr(default=None)  # the recipe file, for error messages

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(_version_message(v))
        return v

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_values(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            return data  # pydantic reports the type
        owned = [
            f"{k} is set by matsql: write {OWNED_TRAINER_KEYS[k]}" for k in data if k in OWNED_TRAINER_KEYS
        ]
        if owned:
            raise ValueError("; ".join(owned))
        # YAML 1.1 reads an unquoted `save_strategy: no` as False and "1e-5" as a string: give TRL
        # the strategy name and the number the recipe's author wrote
        return {
            str(k): ("no" if str(k).endswith("_strategy") and v is False else _coerce_scalar(v))
            for k, v in data.items()
        }

    @model_validator(mode="after")
    def _nll_scope_is_orpo(self) -> Recipe:
        if self.method == "orpo" and self.nll_scope is None:
            self.nll_scope = "completion"
        elif self.method == "sft" and self.nll_scope is not None:
            raise ValueError("nll_scope is an ORPO setting; an SFT recipe may not set it")
        return self

    @property
    def source(self) -> str:
        """The recipe file (or the run's name when the recipe was built in memory)."""
        return self._source or f"recipe {self.name or self.output_dir}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def sha256(self) -> str:
        """Digest of the resolved recipe: equal digests = the same run, however the recipe's keys
        are spread over the files it extends."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _version_message(v: Any) -> str:
    return (
        f"recipe version {v} is not supported (this matsql reads version {RECIPE_VERSION}; in version 2 "
        "TRL arguments pass through `trainer:` unchanged, token limits are under `limits:`, ORPO's "
        "nll_scope is a top-level key, and `extends:` names a base recipe: see recipes/README.md)"
    )


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


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file's mapping with its ``extends:`` chain merged (bases first, the file last)."""
    return _read_chain(Path(path), ())


def _read_chain(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    from matsql.fileio import read_yaml

    key = path.resolve()
    if key in seen:
        raise RecipeError(f"{path}: extends itself ({' -> '.join(map(str, [*seen, key]))})")
    what = "base recipe" if seen else "recipe"
    raw = read_yaml(path, what, RecipeError)
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping, got {type(raw).__name__}")
    if "version" in raw and raw["version"] != RECIPE_VERSION:
        raise RecipeError(f"{path}: {_version_message(raw['version'])}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise RecipeError(f"{path}: extends: expected the path of one base recipe, got {parent!r}")
    return merge(_read_chain(path.parent / parent, (*seen, key)), raw)


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key; lists, scalars and ``null`` replace."""
    out = dict(base)
    for k, v in child.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe file and the bases it extends, apply ``key=value`` overrides, validate.
    Errors name the file and key. TRL checks ``trainer:`` when the run's config is built."""
    path = Path(path)
    raw = apply_overrides(read_recipe_yaml(path), parse_overrides(overrides or []))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key{_did_you_mean(err['loc'])}")
            else:
                problems.append(f"{key}: {str(err['msg']).removeprefix('Value error, ')}")
        if len(problems) == 1:
            raise RecipeError(f"{path}: invalid recipe: {problems[0]}") from None
        raise RecipeError("\n".join([f"{path}: invalid recipe", *(f"  {x}" for x in problems)])) from None
    recipe._source = str(path)
    return recipe


def recipe_digest(path: str | Path) -> str:
    """The digest of a recipe file as resolved (bases merged, defaults filled): what a stage that
    trains from it depends on. Editing a comment, or moving a key into a base, changes nothing."""
    return load_recipe(path).sha256()


_MODELS: dict[str, type[BaseModel]] = {
    "": Recipe,
    "model": ModelSpec,
    "peft": PeftSpec,
    "data": DataSpec,
    "limits": LimitsSpec,
}


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    parent = "data" if len(loc) > 1 and loc[0] == "data" and loc[1] in ("sources", "eval_sources") else None
    model = Source if parent else _MODELS.get(".".join(str(x) for x in loc[:-1]))
    if model is None:
        return ""
    return did_you_mean(str(loc[-1]), model.model_fields)


def did_you_mean(key: str, known: Any, cutoff: float = 0.6) -> str:
    """`` (did you mean 'learning_rate'?)`` for the closest of ``known``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
