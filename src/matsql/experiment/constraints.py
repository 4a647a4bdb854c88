"""Study constraints that must hold by construction (DESIGN.md "Study protocol").

Stages marked ``check: {role: eval}`` are the arms' evaluation rollouts, ``role: select`` their
selection; further roles (``eval-iter1``, ``select-iter1``: the arms after ORPO iteration 1) are
checked the same way, each role on its own, and every role starting with ``eval`` also gets the
K/T/shared-candidates check. Within a role, across arms, command lines must be identical except for the output path and
``--adapter val-sel=...`` / ``--adapter val-cond=...``: same planner candidates
(``--planner-from``), same fixer, same selector, same seeds; and eval runs at K=8, T=1.0.
"""

from __future__ import annotations

from matsql.experiment.plan import Plan, PlanError

VALIDATOR_ADAPTERS = ("val-sel=", "val-cond=")


def _normalise(argv: list[str], arm: str, out: str, arm_outs: dict[str, str]) -> list[str]:
    """Drop validator adapters; name this arm's stage outputs by their role, not their path."""
    norm: list[str] = []
    skip = False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if tok == "--adapter" and nxt.startswith(VALIDATOR_ADAPTERS):
            skip = True
            continue
        if tok.startswith("--adapter=") and tok.split("=", 1)[1].startswith(VALIDATOR_ADAPTERS):
            continue
        tok = tok.replace(out, "<out>")
        for path, role in arm_outs.items():
            tok = tok.replace(path, role)
        norm.append(tok)
    return norm


def _opt(argv: list[str], name: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def check_study(plan: Plan, eval_k: int = 8, eval_temperature: float = 1.0) -> list[str]:
    """Return the constraints checked; raise :class:`PlanError` on the first violation."""
    checked: list[str] = []
    roles = list(dict.fromkeys(s.check["role"] for s in plan.stages.values() if s.check.get("role")))
    for role in roles:
        group = [s for s in plan.stages.values() if s.check.get("role") == role]
        if not group:
            continue
        if len({s.arm for s in group}) != len(group) or None in {s.arm for s in group}:
            raise PlanError(f"{plan.source}: {role} stages must be one per arm")
        normal = {}
        for s in group:
            arm_outs = {  # the arm's own checked stages (select reads its eval rollout); any other
                # per-arm input (an ORPO adapter given to the fixer, say) keeps its path and differs
                t.out: f"<{t.name.replace(s.arm or '', 'ARM')}>"
                for t in plan.stages.values()
                if t.arm == s.arm and t.name != s.name and t.check.get("role")
            }
            normal[s.name] = _normalise(s.argv, s.arm or "", s.out, arm_outs)
        ref_name, ref = next(iter(normal.items()))
        for name, argv in normal.items():
            if argv != ref:
                raise PlanError(
                    f"{plan.source}: {role} stages {ref_name} and {name} differ in more than validators:\n"
                    f"  {' '.join(ref)}\n  {' '.join(argv)}"
                )
        checked.append(f"{role} stages differ only in validator adapters ({', '.join(normal)})")
        if role.startswith("eval"):
            for s in group:
                k, t = _opt(s.argv, "--k"), _opt(s.argv, "--temperature")
                if k is None or int(k) != eval_k or t is None or float(t) != eval_temperature:
                    raise PlanError(
                        f"{plan.source}: {s.name} must run K={eval_k}, T={eval_temperature} (got K={k}, T={t})"
                    )
                if _opt(s.argv, "--planner-from") is None:
                    raise PlanError(
                        f"{plan.source}: {s.name} must reuse shared planner candidates (--planner-from)"
                    )
            checked.append(f"eval at K={eval_k}, T={eval_temperature} with shared planner candidates")
    return checked


def eval_protocol(plan: Plan) -> dict[str, float | int]:
    """The K and T a plan's evaluations must use: K=8, T=1.0 (DESIGN.md), unless the plan
    declares others in ``vars.k_eval`` / ``vars.t_eval`` (the CPU demo: K=2)."""
    return {
        "eval_k": int(plan.vars.get("k_eval", 8)),
        "eval_temperature": float(plan.vars.get("t_eval", 1.0)),
    }
