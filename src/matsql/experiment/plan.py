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

``${...}`` refers to ``run_dir``, ``vars.X``, ``arm``, ``out`` (this stage's output) and
``stages.NAME.out``. A stage is a thin command line, so every stage can be rerun by hand.

Every key is checked: an unknown one (``need:`` for ``needs:``) is an error naming the file and
the key, and ``needs`` must be a list (``needs: sft`` is refused, not read as ``[s, f, t]``).
A stage's ``resources`` are ``shards``, ``processes``, ``slots`` (local scheduling), ``gpus``,
``cpus``, ``mem_gb``, ``time_min`` (what a SLURM job asks for) and ``slurm`` (extra sbatch
parameters for this stage); a plan-level ``slurm:`` mapping holds the cluster's parameters
(``account``, ``partition``, ``qos``, ``constraint``, ...), passed to every SLURM job.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.fileio import read_yaml

_REF = re.compile(r"\$\{([^${}]+)\}")


PLAN_KEYS = ("name", "run_dir", "vars", "arms", "stages", "env", "extends", "slurm")
STAGE_KEYS = ("cmd", "out", "needs", "foreach", "resources", "check")
CHECK_KEYS = ("role",)  # study constraints (matsql.experiment.constraints)
RESOURCE_KEYS = ("shards", "processes", "slots", "gpus", "cpus", "mem_gb", "time_min", "slurm")


class PlanError(ValueError):
    pass


def _check_keys(mapping: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    import difflib

    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of: {', '.join(allowed)}"
            raise PlanError(f"{where}: unknown key {key!r}{hint}")


@dataclass
class Stage:
    name: str
    argv: list[str]
    out: str
    needs: list[str] = field(default_factory=list)
    arm: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)  # executor hints (gpus, time, mem)
    slurm: dict[str, Any] = field(default_factory=dict)  # extra SLURM parameters of this stage
    check: dict[str, Any] = field(default_factory=dict)  # study constraints to verify

    @property
    def command(self) -> str:
        return "matsql " + shlex.join(self.argv)


@dataclass
class Plan:
    name: str
    run_dir: Path
    stages: dict[str, Stage]  # topologically ordered
    vars: dict[str, Any]
    arms: list[str]
    source: str
    raw: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)  # environment for every stage
    slurm: dict[str, Any] = field(default_factory=dict)  # SLURM parameters for every stage

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


def _substitute(text: str, ctx: dict[str, str], where: str) -> str:
    for _ in range(5):  # nested refs like ${stages.team-${arm}.out}
        inner = re.compile(r"\$\{([^${}]+)\}")
        if not inner.search(text):
            return text

        def repl(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in ctx:
                if key.startswith("stages.") and key.endswith(".out"):
                    return m.group(0)  # resolved in a later pass
                raise PlanError(f"{where}: unknown reference ${{{key}}}")
            return str(ctx[key])

        new = inner.sub(repl, text)
        if new == text:
            break
        text = new
    if _REF.search(text):
        raise PlanError(f"{where}: unresolved reference in {text!r}")
    return text


def load_plan(
    path: str | Path, overrides: dict[str, str] | None = None, base_dir: Path | None = None
) -> Plan:
    raw = read_plan_yaml(Path(path))
    return parse_plan(raw, source=str(path), overrides=overrides, base_dir=base_dir)


def read_plan_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A plan's YAML with ``extends: OTHER.yaml`` resolved (relative to the file): the child's
    ``vars``/``env`` entries override the parent's; other keys (stages, arms, ...) replace them."""
    path = path.resolve()
    if path in _seen:
        raise PlanError(f"{path}: extends itself ({' -> '.join(map(str, _seen))})")
    raw = read_yaml(path, "plan", PlanError)
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a plan is a mapping")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = read_plan_yaml(path.parent / str(parent), (*_seen, path))
    merged = {**base, **{k: v for k, v in raw.items() if k not in ("vars", "env")}}
    for key in ("vars", "env"):
        if key in base or key in raw:
            merged[key] = {**(base.get(key) or {}), **(raw.get(key) or {})}
    return merged


def parse_plan(
    raw: dict[str, Any],
    source: str = "<plan>",
    overrides: dict[str, str] | None = None,
    base_dir: Path | None = None,
) -> Plan:
    if not isinstance(raw, dict) or "stages" not in raw:
        raise PlanError(f"{source}: a plan needs 'name' and 'stages'")
    _check_keys(raw, PLAN_KEYS, source)
    for key in ("vars", "env", "slurm"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise PlanError(f"{source}: {key} must be a mapping, got {raw[key]!r:.60}")
    if not isinstance(raw["stages"] or {}, dict):
        raise PlanError(f"{source}: stages must be a mapping of stage name -> stage")
    name = str(raw.get("name", "plan"))
    vars_: dict[str, Any] = dict(raw.get("vars") or {})
    run_dir_raw = str(raw.get("run_dir", f"runs/{name}"))
    for k, v in (overrides or {}).items():
        if k == "run_dir":
            run_dir_raw = v
        elif k.startswith("vars."):
            vars_[k[5:]] = v
        else:
            raise PlanError(f"override {k!r}: only run_dir and vars.NAME can be overridden")
    base = base_dir or Path.cwd()
    raw_arms = raw.get("arms") or []
    # arms: a list of names, or a mapping name -> per-arm vars (referenced as ${arm.X})
    arm_vars: dict[str, dict[str, Any]] = (
        {str(k): dict(v or {}) for k, v in raw_arms.items()}
        if isinstance(raw_arms, dict)
        else {str(a): {} for a in raw_arms}
    )
    arms = list(arm_vars)
    ctx: dict[str, str] = {"name": name, "base_dir": str(base)}
    for k, v in vars_.items():  # vars may refer to earlier vars, name and base_dir
        ctx[f"vars.{k}"] = _substitute(str(v), ctx, f"{source}: vars.{k}")
    run_dir = Path(_substitute(run_dir_raw, ctx, f"{source}: run_dir"))
    if not run_dir.is_absolute():
        run_dir = base / run_dir
    ctx["run_dir"] = str(run_dir)

    # expand foreach stages
    expanded: list[tuple[str, dict[str, Any], str | None]] = []
    for sname, spec in (raw["stages"] or {}).items():
        if spec is not None and not isinstance(spec, dict):
            raise PlanError(f"{source}: stage {sname} must be a mapping, got {spec!r:.60}")
        spec = dict(spec or {})
        _check_keys(spec, STAGE_KEYS, f"{source}: stage {sname}")
        needs = spec.get("needs")
        if needs is not None and not isinstance(needs, list):
            raise PlanError(
                f"{source}: stage {sname}: needs must be a list of stage names, e.g. needs: [{needs}]"
            )
        res = spec.get("resources")
        if res is not None and not isinstance(res, dict):
            raise PlanError(f"{source}: stage {sname}: resources must be a mapping, got {res!r:.60}")
        _check_keys(res or {}, RESOURCE_KEYS, f"{source}: stage {sname}: resources")
        chk = spec.get("check")
        if chk is not None and not isinstance(chk, dict):
            raise PlanError(f"{source}: stage {sname}: check must be a mapping, e.g. check: {{role: eval}}")
        _check_keys(chk or {}, CHECK_KEYS, f"{source}: stage {sname}: check")
        if spec.get("foreach") not in (None, "arm"):
            raise PlanError(f"{source}: stage {sname}: foreach must be 'arm', got {spec['foreach']!r}")
        if spec.get("foreach") == "arm":
            if not arms:
                raise PlanError(f"{source}: stage {sname} uses foreach: arm but the plan has no arms")
            for arm in arms:
                expanded.append((sname.replace("${arm}", arm), spec, arm))
        else:
            expanded.append((sname, spec, None))

    stages: dict[str, Stage] = {}
    outs: dict[str, str] = {}
    for sname, spec, arm in expanded:
        local = dict(ctx)
        if arm is not None:
            local["arm"] = arm
            local.update(
                {
                    f"arm.{k}": _substitute(str(v), local, f"{source}: arms.{arm}.{k}")
                    for k, v in arm_vars[arm].items()
                }
            )
        if "cmd" not in spec:
            raise PlanError(f"{source}: stage {sname} has no cmd")
        out = _substitute(str(spec.get("out", "${run_dir}/" + sname)), local, f"{source}: {sname}.out")
        outs[sname] = out
        stages[sname] = Stage(
            name=sname,
            argv=[],
            out=out,
            needs=[_substitute(str(n), local, f"{source}: {sname}.needs") for n in spec.get("needs") or []],
            arm=arm,
            resources={
                k: _substitute(str(v), local, f"{source}: {sname}.resources.{k}")
                for k, v in (spec.get("resources") or {}).items()
                if k != "slurm"
            },
            slurm=_slurm_params(
                (spec.get("resources") or {}).get("slurm"), local, f"{source}: {sname}.resources.slurm"
            ),
            check=dict(spec.get("check") or {}),
        )
        stages[sname]._cmd = spec["cmd"]  # type: ignore[attr-defined]
        stages[sname]._ctx = local  # type: ignore[attr-defined]
    for s in stages.values():
        for d in s.needs:
            if d not in stages:
                raise PlanError(f"{source}: stage {s.name} needs unknown stage {d!r}")
        local = dict(s._ctx)  # type: ignore[attr-defined]
        local["out"] = s.out
        local.update({f"stages.{n}.out": o for n, o in outs.items()})
        cmd = s._cmd  # type: ignore[attr-defined]
        if isinstance(cmd, list):  # one argument per item, substituted as is
            s.argv = [_substitute(str(p), local, f"{source}: {s.name}.cmd") for p in cmd]
        else:  # a command line: substitute, then split (a var may hold several options)
            s.argv = shlex.split(_substitute(str(cmd), local, f"{source}: {s.name}.cmd"))
        del s._cmd, s._ctx  # type: ignore[attr-defined]
    ordered = _toposort(stages, source)
    env = {str(k): _substitute(str(v), ctx, f"{source}: env.{k}") for k, v in (raw.get("env") or {}).items()}
    return Plan(
        name=name,
        run_dir=run_dir,
        stages=ordered,
        vars=vars_,
        arms=arms,
        source=source,
        raw=raw,
        env=env,
        slurm=_slurm_params(raw.get("slurm"), ctx, f"{source}: slurm"),
    )


def _slurm_params(raw: Any, ctx: dict[str, str], where: str) -> dict[str, Any]:
    """SLURM parameters (``account: X`` -> submitit's ``slurm_account``); strings substituted."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PlanError(f"{where} must be a mapping, e.g. {{account: X, partition: Y}}")
    return {str(k): _substitute(v, ctx, f"{where}.{k}") if isinstance(v, str) else v for k, v in raw.items()}


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
