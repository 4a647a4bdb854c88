"""Experiment plans: a YAML graph of stages, each one `matsql` command.

A plan::

    name: demo
    run_dir: runs/demo                  # relative to the plan's base_dir (default: cwd)
    vars: {model: smollm2-135m-instruct, eval: minibench}
    arms: [collab, indep]               # stages with `foreach: arm` are instantiated per arm
    stages:
      sft-data:
        cmd: train sft-data --agent all --benchmark ${vars.train} --out ${out}
        out: ${run_dir}/sft-data
      eval-${arm}:
        foreach: arm
        needs: [sft-data]
        cmd: rollout --benchmark ${vars.eval} --agents ${stages.team-${arm}.out} --out ${out}
        out: ${run_dir}/eval-${arm}.jsonl

The file is checked against :class:`PlanSpec` (pydantic, every key known): an unknown key
(``need:`` for ``needs:``) or a value of the wrong type is an error naming the file, the line
and the stage; ``needs`` must be a list (``needs: sft`` is refused, not read as ``[s, f, t]``).

References are OmegaConf interpolations over ``name``, ``base_dir``, ``run_dir``, ``vars.X``,
``arm.X`` (the arm's own vars, when ``arms`` is a mapping), ``out`` (this stage's output) and
``stages.NAME.out``; vars may refer to each other, a var ``???`` must be set with
``--set vars.X=...``, and ``\\${`` is a literal ``${``. ``${arm}``, the arm's name, is filled in
first, when a ``foreach: arm`` stage is instantiated, so it may be part of a stage name or of a
key (``${stages.team-${arm}.out}``).

Stages are typed entries (:class:`StageSpec`) that hold a command line, not one model per kind
of command: the plan stays a list of commands a person can read and rerun by hand, and each
command checks its own options when it runs. A stage's kind is the matsql command it runs
(:attr:`Stage.kind`).

A stage's ``resources`` are ``shards``, ``processes``, ``slots`` (local scheduling), ``gpus``,
``cpus``, ``mem_gb``, ``time_min`` (what a SLURM job asks for) and ``slurm`` (extra sbatch
parameters for this stage); a plan-level ``slurm:`` mapping holds the cluster's parameters
(``account``, ``partition``, ``qos``, ``constraint``, ...), passed to every SLURM job. A plan may
pre-register its primary comparison (DESIGN.md "Study protocol") before the evaluation runs::

    primary: {stage: compare, metric: selector EX, margin_pp: 1.0, claim: COLLAB - INDEP >= 1 pp}

(``stage`` must be a ``matsql compare`` stage of the plan; the values may refer to vars, e.g.
``margin_pp: ${vars.margin}``; :attr:`Plan.primary`).
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from matsql.fileio import read_yaml

OVERRIDE_HELP = "only run_dir and vars.NAME can be overridden"


class PlanError(ValueError):
    pass


# --- the schema of a plan file --------------------------------------------------------------------

Scalar = str | int | float | bool | None
_INTERPOLATION = r"\$\{"


def _empty_is_unset(value: Any) -> Any:
    """``shards: ${vars.shards}`` with ``--set vars.shards=`` means "not set", not an error."""
    return None if value == "" else value


# a value that is an int, or (before interpolation) a string holding a reference
Int = Annotated[int | Annotated[str, Field(pattern=_INTERPOLATION)] | None, BeforeValidator(_empty_is_unset)]
Float = Annotated[
    float | Annotated[str, Field(pattern=_INTERPOLATION)] | None, BeforeValidator(_empty_is_unset)
]


def _none_is_empty(data: Any, empty: dict[str, Any]) -> Any:
    """YAML's ``key:`` with nothing after it is an empty mapping or list, as a reader expects."""
    if isinstance(data, dict):
        return {k: type(empty[k])() if k in empty and v is None else v for k, v in data.items()}
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """Scheduling hints of a stage (outside its hash). The same model checks the file (where a
    value may still be ``${vars.shards}``) and the resolved values (ints)."""

    shards: Int = None  # rollout processes over disjoint questions
    processes: Int = None  # training processes (accelerate)
    slots: Int = None  # GPU slots one process takes (a share of a card)
    gpus: Int = None  # SLURM: GPUs per job (or per shard)
    cpus: Int = None
    mem_gb: Float = None
    time_min: Int = None
    slurm: dict[str, Any] | None = None  # extra sbatch parameters of this stage

    def hints(self) -> dict[str, Any]:
        """The hints that are set, without ``slurm`` (what :attr:`Stage.resources` holds)."""
        return self.model_dump(exclude_none=True, exclude={"slurm"})


class Check(_Strict):
    """Study constraints to verify (:mod:`matsql.experiment.constraints`)."""

    role: str | None = None


class StageSpec(_Strict):
    """One entry under ``stages:``: a matsql command line (or its argument list), its output,
    the stages it needs, and how it is scheduled."""

    cmd: str | list[Scalar]
    out: str | None = None  # default: ${run_dir}/<stage name>
    needs: list[str] = Field(default_factory=list)
    foreach: Literal["arm"] | None = None
    resources: Resources = Field(default_factory=Resources)
    check: Check = Field(default_factory=Check)

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _none_is_empty({} if data is None else data, {"needs": [], "resources": {}, "check": {}})


class Primary(_Strict):
    """The pre-registered primary comparison: written into the plan before the evaluation runs,
    so that what was to be claimed is on record beside what was measured (``experiment collect``
    marks it and states it at this margin)."""

    stage: str  # the `matsql compare` stage whose compare.json decides it
    metric: str = "selector EX"
    margin_pp: float = Field(default=0.0, ge=0)  # claimed only if the CI's lower bound clears it
    claim: str | None = None  # in words, e.g. "COLLAB - INDEP >= 1 pp"


class PrimarySpec(_Strict):
    """``primary:`` as written in the file: its values may refer to the plan's vars
    (``margin_pp: ${vars.primary_margin_pp}``), so the block and the stage that runs the
    comparison read one value; checked as :class:`Primary` once filled in."""

    stage: str
    metric: str = "selector EX"
    margin_pp: Float = 0.0
    claim: str | None = None


class PlanSpec(_Strict):
    """A plan file (after ``extends:`` is merged)."""

    name: str = "plan"
    run_dir: str | None = None  # default: runs/<name>
    vars: dict[str, Scalar] = Field(default_factory=dict)
    # a list of names, or a mapping name -> per-arm vars (referenced as ${arm.X})
    arms: list[str] | dict[str, dict[str, Scalar] | None] = Field(default_factory=list)
    stages: dict[str, StageSpec]
    env: dict[str, Scalar] = Field(default_factory=dict)  # environment of every stage
    slurm: dict[str, Any] = Field(default_factory=dict)  # SLURM parameters of every stage
    primary: PrimarySpec | None = None
    extends: str | None = None  # merged by read_plan_yaml

    @model_validator(mode="before")
    @classmethod
    def _nulls(cls, data: Any) -> Any:
        return _none_is_empty(data, {"vars": {}, "arms": [], "stages": {}, "env": {}, "slurm": {}})

    def arm_vars(self) -> dict[str, dict[str, Scalar]]:
        if isinstance(self.arms, dict):
            return {a: dict(v or {}) for a, v in self.arms.items()}
        return {a: {} for a in self.arms}


# --- the resolved plan ----------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    argv: list[str]
    out: str
    needs: list[str] = field(default_factory=list)
    arm: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)  # Resources.hints(): shards, gpus, ...
    slurm: dict[str, Any] = field(default_factory=dict)  # extra SLURM parameters of this stage
    check: dict[str, Any] = field(default_factory=dict)  # study constraints to verify

    @property
    def command(self) -> str:
        return "matsql " + shlex.join(self.argv)

    @property
    def kind(self) -> str:
        """The matsql command the stage runs (``rollout``, ``train``, ``compare``, ...)."""
        return self.argv[0] if self.argv else ""


@dataclass
class Plan:
    name: str
    run_dir: Path
    stages: dict[str, Stage]  # topologically ordered
    vars: dict[str, Any]  # resolved (overrides applied, references filled in)
    arms: list[str]
    source: str
    raw: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)  # environment for every stage
    slurm: dict[str, Any] = field(default_factory=dict)  # SLURM parameters for every stage
    primary: Primary | None = None
    base_dir: Path = field(default_factory=Path.cwd)  # what ${base_dir} and a relative run_dir mean

    def ancestors(self, name: str) -> list[str]:
        if name not in self.stages:
            raise PlanError(f"no stage {name!r} in {self.source}; stages: {', '.join(self.stages)}")
        seen: list[str] = []

        def visit(n: str) -> None:
            for d in self.stages[n].needs:
                visit(d)
            if n not in seen:
                seen.append(n)

        visit(name)
        return [n for n in self.stages if n in seen]

    def priority_order(self, prefer: list[str] | None = None) -> list[str]:
        """Stages in the order to start them when several are ready and GPUs are short.

        The ancestors of ``prefer`` (e.g. the study's compare) come first; then, within each
        group, the stage with the longest chain of stages still to run after it (the critical
        path: a label rollout before a side evaluation), then plan order. A sharded rollout
        counts as ``shards`` stages: it occupies that many GPU slots for its whole run.
        """
        preferred: set[str] = set()
        for target in prefer or []:
            preferred.update(self.ancestors(target))
        users: dict[str, list[str]] = {n: [] for n in self.stages}
        for n, s in self.stages.items():
            for d in s.needs:
                users[d].append(n)
        height: dict[str, int] = {}
        for n in reversed(self.stages):  # topological order reversed: users first
            weight = max(int(self.stages[n].resources.get("shards", 1) or 1), 1)
            height[n] = weight + max((height[u] for u in users[n]), default=0)
        index = {n: i for i, n in enumerate(self.stages)}
        return sorted(self.stages, key=lambda n: (n not in preferred, -height[n], index[n]))


# --- reading ----------------------------------------------------------------------------------------


def load_plan(
    path: str | Path, overrides: dict[str, str] | None = None, base_dir: Path | None = None
) -> Plan:
    raw, files = _read_chain(Path(path))
    return parse_plan(raw, source=str(path), overrides=overrides, base_dir=base_dir, files=files)


def read_plan_yaml(path: Path) -> dict[str, Any]:
    """A plan's YAML with ``extends: OTHER.yaml`` resolved (relative to the file): the child's
    ``vars``/``env`` entries override the parent's; other keys (stages, arms, ...) replace them."""
    return _read_chain(path)[0]


def _read_chain(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """(merged YAML, the files it came from: this one first, then what it extends)."""
    path = path.resolve()
    if path in _seen:
        raise PlanError(f"{path}: extends itself ({' -> '.join(map(str, _seen))})")
    raw = read_yaml(path, "plan", PlanError)
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a plan is a mapping")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, [path]
    base, files = _read_chain(path.parent / str(parent), (*_seen, path))
    merged = {**base, **{k: v for k, v in raw.items() if k not in ("vars", "env")}}
    for key in ("vars", "env"):
        if key in base or key in raw:
            merged[key] = {**(base.get(key) or {}), **(raw.get(key) or {})}
    return merged, [path, *files]


def _line_of(files: Sequence[Path], keys: Sequence[Any], source: str) -> str | None:
    """``FILE:LINE`` of the deepest of ``keys`` (a path into the plan) found in the plan's files;
    the file that holds most of the path wins, the plan itself before what it extends."""
    import yaml

    best: tuple[int, str] | None = None
    for i, f in enumerate(files):
        try:
            node: Any = yaml.compose(f.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        depth, line = 0, 0
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            hit = next((kv for kv in node.value if getattr(kv[0], "value", None) == str(key)), None)
            if hit is None:
                break
            depth, line, node = depth + 1, hit[0].start_mark.line + 1, hit[1]
        if depth and (best is None or depth > best[0]):
            best = (depth, f"{source if i == 0 else f}:{line}")
    return best[1] if best else None


def _locate(source: str, files: Sequence[Path], keys: Sequence[Any]) -> str:
    """``plan.yaml:12`` (where ``keys``, a path into the plan, is), or ``plan.yaml``."""
    return (_line_of(files, keys, source) if files else None) or source


def _where(source: str, files: Sequence[Path], keys: Sequence[Any], at: Sequence[Any] | None = None) -> str:
    """``plan.yaml:12: stage eval-${arm}: resources`` for the path ``keys`` into the plan (the
    line of ``at``, a longer path, when given)."""
    head = _locate(source, files, keys if at is None else at)
    if keys and keys[0] == "stages" and len(keys) > 1:
        parts = [f"stage {keys[1]}", *map(str, keys[2:])]
    else:
        parts = [".".join(map(str, keys))] if keys else []
    return ": ".join([head, *parts])


_MODELS: dict[str, type[BaseModel]] = {"resources": Resources, "check": Check, "primary": Primary}


def _schema_error(
    e: ValidationError, raw: Any, source: str, files: Sequence[Path], prefix: Sequence[Any] = ()
) -> PlanError:
    """The first validation error, in the plan's words: file, line, stage, key (``raw`` is the
    validated value, found at ``prefix`` in the plan)."""
    # an unknown key first (a typo explains the rest), then the deepest error (in a union, the
    # branch that got furthest: `arms` as a mapping, not as a list)
    err = min(e.errors(), key=lambda x: (x["type"] != "extra_forbidden", -len(x["loc"])))
    keys: list[Any] = list(prefix)
    node: Any = raw
    for part in err["loc"]:  # keep the real keys; drop pydantic's union-branch tags
        if isinstance(node, dict) and part in node:
            keys.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            keys.append(part)
            node = node[part]
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        key = keys.pop() if keys else err["loc"][-1]
        parent = keys[-1] if keys else None
        model: type[BaseModel] = (
            StageSpec if len(keys) == 2 and keys[0] == "stages" else _MODELS.get(str(parent), PlanSpec)
        )
        allowed = list(model.model_fields)
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of: {', '.join(allowed)}"
        return PlanError(f"{_where(source, files, keys, at=[*keys, key])}: unknown key {key!r}{hint}")
    if keys[-1:] == ["needs"] and kind == "list_type":
        return PlanError(
            f"{_where(source, files, keys[:-1])}: needs must be a list of stage names, e.g. needs: [{node}]"
        )
    if kind == "missing" and err["loc"][-1] == "cmd":
        return PlanError(f"{_where(source, files, keys)}: the stage has no cmd")
    if kind == "literal_error" and keys[-1:] == ["foreach"]:
        return PlanError(f"{_where(source, files, keys[:-1])}: foreach must be 'arm', got {node!r}")
    return PlanError(f"{_where(source, files, keys)}: {msg}, got {node!r:.60}")


# --- interpolation (OmegaConf) ----------------------------------------------------------------------

_LITERAL_REF = re.compile(r"(\\*)\$\{")


def _literal(value: Any) -> Any:
    """A resolved value, escaped so that OmegaConf keeps it as it is (``${`` -> ``\\${``)."""
    if isinstance(value, str):
        return _LITERAL_REF.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


_PLAIN_REF = re.compile(r"\$\{([\w.-]+)\}")  # ${vars.x}, ${stages.sft-data.out}


class _Scope:
    """One OmegaConf config holding the names a plan's references may use: ``name``,
    ``base_dir``, ``run_dir``, ``vars``, then ``stages``; a stage's own ``arm`` and ``out`` are
    set beside them while its fields are filled in.

    OmegaConf's grammar costs about a millisecond per command line (twice: when a string is set
    and when it is resolved): 0.9 s for the study's 53 stages, ten times the plan's reading.
    So a string whose references are all plain (``${vars.x}``, ``${stages.sft-data.out}``; no
    backslash) is cut at them, and each is looked up among the values already known: a value
    set as plain text (``out``, ``run_dir``, the vars once OmegaConf resolved them) or one
    OmegaConf resolved earlier while the names it uses stayed the same. Any other string
    (nested references, resolvers, escapes) and any reference not known goes to OmegaConf."""

    def __init__(self, names: dict[str, Any]) -> None:
        from omegaconf import OmegaConf

        self.cfg = OmegaConf.create({})
        self.containers: set[str] = set()  # names of mappings (not values) in the scope
        self.known: dict[str, str] = {}  # plain reference -> its value, as text
        self.derived: set[str] = set()  # known references that OmegaConf resolved
        # names set since OmegaConf last looked: its nodes cost ~0.1 ms each, so a name whose
        # values are all known reaches the config only when OmegaConf is needed
        self.pending: dict[str, tuple[Any, Callable[[str], str] | None]] = {}
        for key, value in names.items():
            self.set(key, value)

    def set(self, key: str, value: Any, where: Callable[[str], str] | None = None) -> None:
        """``key`` = ``value`` (None removes it); references in ``value`` resolve where used."""

        def under(name: str) -> bool:
            return name == key or name.startswith(key + ".")

        self.containers = {c for c in self.containers if not under(c)}
        # a value set as plain text goes with its name; one OmegaConf resolved may have used it
        self.known = {r: v for r, v in self.known.items() if not under(r) and r not in self.derived}
        self.derived = set()
        self.pending[key] = (value, where)
        if value is not None:
            self.containers |= _container_paths(value, key)
            self.known |= _plain_values(value, key)

    def _sync(self) -> None:
        from omegaconf.errors import OmegaConfBaseException

        for key, (value, where) in self.pending.items():
            try:
                if value is None:
                    self.cfg.pop(key, None)
                else:
                    self.cfg[key] = value
            except OmegaConfBaseException as e:
                raise _interpolation_error(e, key, where or (lambda k, key=key: key)) from None
        self.pending = {}

    def resolve(self, key: str, where: Callable[[str], str]) -> dict[str, Any]:
        """The mapping at ``key`` (e.g. ``vars``, whose values refer to each other) resolved."""
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        self._sync()
        try:
            out = OmegaConf.to_container(self.cfg[key], resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise _interpolation_error(e, key, where) from None
        assert isinstance(out, dict)
        return out

    def fill(self, tree: Any, where: Callable[[str], str]) -> Any:
        """``tree`` with each string that holds a reference resolved (to a string: a file's
        string stays one); ``where(FIELD)`` names the field ``FIELD`` in an error."""
        refs = {f: t for f, t in _strings(tree) if "${" in t}
        if not refs:
            return tree
        whole: list[str] = []  # fields that OmegaConf resolves as they are
        asked: dict[str, str] = {}  # plain reference not yet known -> the first field using it
        for at, text in refs.items():
            plain = _PLAIN_REF.findall(text)
            for ref in plain:  # OmegaConf would write a mapping's repr into the text
                if ref in self.containers:
                    raise PlanError(f"{where(at)}: ${{{ref}}} is a mapping, not a value")
            if "\\" in text or text.count("${") != len(plain):
                whole.append(at)
            else:
                asked |= {r: at for r in plain if r not in self.known and r not in asked}
        items = {f"w{i}": refs[f] for i, f in enumerate(whole)}
        items |= {f"r{i}": "${" + r + "}" for i, r in enumerate(asked)}
        fields = {f"w{i}": f for i, f in enumerate(whole)} | {
            f"r{i}": f for i, f in enumerate(asked.values())
        }
        got: dict[str, Any] = {}
        if items:
            self.set("_", items, lambda k: where(fields.get(k, k)))
            got = self.resolve("_", lambda k: where(fields.get(k, k)))
            self.set("_", None)
        for i, (ref, at) in enumerate(asked.items()):
            if isinstance(got[f"r{i}"], dict | list):
                raise PlanError(f"{where(at)}: ${{{ref}}} is a mapping, not a value")
            self.known[ref] = str(got[f"r{i}"])
            self.derived.add(ref)
        for at, text in refs.items():
            if at in whole:
                value = got[f"w{whole.index(at)}"]
                if isinstance(value, dict | list):
                    raise PlanError(f"{where(at)}: {text} is a mapping, not a value")
                text = str(value)
            else:
                text = _PLAIN_REF.sub(lambda m: self.known[m.group(1)], text)
            tree = _put(tree, at.split(".") if at else [], text)
        return tree


def _plain_values(value: Any, at: str) -> dict[str, str]:
    """path -> text of each scalar in ``value`` that OmegaConf keeps as it is (no reference, no
    escape, not the missing-value marker ``???``): what a plain ``${path}`` gives."""
    if isinstance(value, dict | list):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return {k: v for key, item in items for k, v in _plain_values(item, f"{at}.{key}").items()}
    if isinstance(value, str) and ("${" in value or value == "???"):
        return {}
    return {at: str(value)}


def _container_paths(value: Any, at: str) -> set[str]:
    if not isinstance(value, dict | list):
        return set()
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return {at}.union(*(_container_paths(v, f"{at}.{k}") for k, v in items))


def _put(tree: Any, path: list[str], value: Any) -> Any:
    """A copy of ``tree`` with ``value`` at ``path`` (dotted keys; list indexes as digits)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, list):
        i = int(head)
        return [*tree[:i], _put(tree[i], rest, value), *tree[i + 1 :]]
    return {**tree, head: _put(tree[head], rest, value)}


def _strings(tree: Any, at: str = "") -> list[tuple[str, str]]:
    """(dotted field, text) of every string in ``tree``."""
    if isinstance(tree, str):
        return [(at, tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    return [hit for k, v in items for hit in _strings(v, f"{at}.{k}" if at else str(k))]


def _interpolation_error(e: Exception, key: str, where: Callable[[str], str]) -> PlanError:
    from omegaconf.errors import (
        InterpolationKeyError,
        InterpolationToMissingValueError,
        MissingMandatoryValue,
    )

    full = str(getattr(e, "full_key", "") or "")
    at = full[len(key) + 1 :] if full.startswith(key + ".") else ""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, InterpolationKeyError):
        m = re.search(r"Interpolation key '([^']*)' not found", text)
        text = f"unknown reference ${{{m.group(1) if m else '?'}}}"
    elif isinstance(e, MissingMandatoryValue | InterpolationToMissingValueError):
        text = f"a value is ??? (give it with --set): {text}"
    return PlanError(f"{where(at)}: {text}")


def _instantiate(value: Any, arm: str) -> Any:
    """A ``foreach: arm`` template with ``${arm}`` replaced by the arm's name."""
    if isinstance(value, str):
        return value.replace("${arm}", arm)
    if isinstance(value, dict):
        return {k: _instantiate(v, arm) for k, v in value.items()}
    if isinstance(value, list):
        return [_instantiate(v, arm) for v in value]
    return value


# --- parsing ----------------------------------------------------------------------------------------


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """``--set run_dir=...`` / ``--set vars.NAME=...``: the value is taken as text (it may hold
    references, e.g. ``--set vars.agents=${base_dir}/x.yaml``)."""
    raw = dict(raw)
    vars_ = dict(raw.get("vars") or {})
    for k, v in overrides.items():
        if k == "run_dir":
            raw["run_dir"] = v
        elif k.startswith("vars.") and len(k) > 5:
            vars_[k[5:]] = v
        else:
            raise PlanError(f"override {k!r}: {OVERRIDE_HELP}")
    if vars_ or "vars" in raw:
        raw["vars"] = vars_
    return raw


def parse_plan(
    raw: dict[str, Any],
    source: str = "<plan>",
    overrides: dict[str, str] | None = None,
    base_dir: Path | None = None,
    files: Sequence[Path] = (),
) -> Plan:
    """Check ``raw`` against :class:`PlanSpec`, expand ``foreach: arm`` stages, resolve every
    reference and order the stages. ``files`` (the plan file, then what it extends) let errors
    name a line."""
    if not isinstance(raw, dict) or "stages" not in raw:
        raise PlanError(f"{source}: a plan needs 'name' and 'stages'")
    raw_in = _apply_overrides(raw, overrides or {})
    try:
        spec = PlanSpec.model_validate(raw_in)
    except ValidationError as e:
        raise _schema_error(e, raw_in, source, files) from None
    base = base_dir or Path.cwd()

    def where(*keys: Any) -> Callable[[str], str]:
        return lambda key: _where(source, files, [*keys, *(key.split(".") if key else [])])

    # run_dir (relative to base_dir), then the vars: both in the plan-wide scope
    run_dir_raw = spec.run_dir if spec.run_dir is not None else f"runs/{spec.name}"
    scope = _Scope({"name": _literal(spec.name), "base_dir": _literal(str(base))})
    scope.set("vars", spec.vars, where("vars"))
    run_dir = Path(scope.fill({"run_dir": run_dir_raw}, where())["run_dir"])
    if not run_dir.is_absolute():
        run_dir = base / run_dir
    scope.set("run_dir", _literal(str(run_dir)))
    vars_ = scope.resolve("vars", where("vars"))
    scope.set("vars", _literal(vars_))

    # expand foreach stages: ${arm} is part of the template, filled in before interpolation
    arm_vars = spec.arm_vars()
    expanded: list[tuple[str, str, StageSpec, str | None]] = []  # (name, template name, spec, arm)
    for tname, st in spec.stages.items():
        if st.foreach == "arm":
            if not arm_vars:
                raise PlanError(f"{where('stages', tname)('')}: foreach: arm but the plan has no arms")
            expanded += [(tname.replace("${arm}", arm), tname, st, arm) for arm in arm_vars]
        else:
            expanded.append((tname, tname, st, None))

    def fill_stage(tree: dict[str, Any], tname: str, arm: str | None) -> dict[str, Any]:
        if arm is not None:
            tree = _instantiate(tree, arm)
            scope.set("arm", _instantiate(arm_vars[arm], arm), where("arms", arm))
        else:
            scope.set("arm", None)
        return scope.fill(tree, where("stages", tname))

    outs: dict[str, str] = {}
    for name, tname, st, arm in expanded:
        if st.out is None:  # the default, ${run_dir}/NAME
            outs[name] = f"{run_dir}/{name}"
        else:
            outs[name] = fill_stage({"out": st.out}, tname, arm)["out"]

    stages: dict[str, Stage] = {}
    scope.set("stages", {n: {"out": _literal(o)} for n, o in outs.items()})
    for name, tname, st, arm in expanded:
        scope.set("out", _literal(outs[name]))
        got = fill_stage(st.model_dump(include={"cmd", "needs", "resources", "check"}), tname, arm)
        try:
            res = Resources.model_validate(got["resources"])
        except ValidationError as e:
            prefix = ["stages", tname, "resources"]
            raise _schema_error(e, got["resources"], source, files, prefix) from None
        cmd = got["cmd"]
        stages[name] = Stage(
            name=name,
            # one argument per item, or a command line split once filled in (a var may hold
            # several options)
            argv=[str(a) for a in cmd] if isinstance(cmd, list) else shlex.split(cmd),
            out=outs[name],
            needs=got["needs"],
            arm=arm,
            resources=res.hints(),
            slurm=dict(res.slurm or {}),
            check={k: v for k, v in got["check"].items() if v is not None},
        )
    for name, tname, _, _ in expanded:
        for d in stages[name].needs:
            if d not in stages:
                head = _locate(source, files, ["stages", tname, "needs"])
                raise PlanError(f"{head}: stage {name} needs unknown stage {d!r}")
    ordered = _toposort(stages, source)
    for key in ("arm", "out", "stages"):  # env and slurm see the plan-wide names only
        scope.set(key, None)
    env = scope.fill({k: str(v) for k, v in spec.env.items()}, where("env"))
    slurm = scope.fill(spec.slurm, where("slurm"))
    primary = None
    if spec.primary is not None:
        filled = scope.fill(spec.primary.model_dump(), where("primary"))
        try:
            primary = Primary.model_validate(filled)
        except ValidationError as e:
            raise _schema_error(e, filled, source, files, ["primary"]) from None
        _check_primary(primary, ordered, _where(source, files, ["primary"]))
    return Plan(
        name=spec.name,
        run_dir=run_dir,
        stages=ordered,
        vars=vars_,
        arms=list(arm_vars),
        source=source,
        raw=raw,
        env=env,
        slurm=slurm,
        primary=primary,
        base_dir=base,
    )


def _check_primary(primary: Primary, stages: dict[str, Stage], where: str) -> None:
    stage = stages.get(primary.stage)
    if stage is None:
        raise PlanError(f"{where}: stage {primary.stage!r} is not a stage of the plan")
    if stage.kind != "compare":
        raise PlanError(f"{where}: stage {primary.stage!r} runs `matsql {stage.kind}`, not `matsql compare`")


def _toposort(stages: dict[str, Stage], source: str) -> dict[str, Stage]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise PlanError(f"{source}: cycle between stages {' -> '.join([*path, n])}")
        state[n] = 1
        for d in stages[n].needs:
            visit(d, [*path, n])
        state[n] = 2
        order.append(n)

    for n in stages:  # keep declaration order where dependencies allow
        visit(n, [])
    return {n: stages[n] for n in order}
