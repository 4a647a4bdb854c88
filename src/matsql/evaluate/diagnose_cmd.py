"""`matsql diagnose fixer`: E4 critique-usage diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
diagnose_app = typer.Typer(help="Diagnostics that explain a result (E4).", no_args_is_help=True)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


@diagnose_app.command("fixer")
def fixer_cmd(
    rollouts: Path = typer.Argument(..., help="rollout JSONL"),
    agents: Path | None = typer.Option(
        None, "--agents", "-a", help="with a fixer backend: run the counterfactual probe"
    ),
    adapters: list[str] = typer.Option([], "--adapter", help="AGENT=PATH override"),
    counterfactual: str = typer.Option(
        "flip,swap", "--counterfactual", help="flip (verdicts reversed), swap (another candidate's critiques)"
    ),
    max_probes: int = typer.Option(200, "--max-probes", help="branches probed per counterfactual"),
    benchmark: str | None = typer.Option(
        None, "--benchmark", help="benchmark of the rollout (default: the one its header names)"
    ),
    data: Path | None = typer.Option(None, "--data", help="benchmark root (default MATSQL_DATA)"),
    out: Path | None = typer.Option(None, "--out", help="write the diagnostics JSON here"),
    seed: int = typer.Option(
        0, "--seed", help="seed passed to the fixer backend for the counterfactual probe"
    ),
) -> None:
    """Does the critique reach the fixer, and does the fixer act on it?"""
    from matsql.agents import fixer
    from matsql.evaluate.diagnostics import counterfactual_critiques, fixer_diagnostics
    from matsql.records import record_prompt_digest
    from matsql.rollout.io import read_header, read_records, schema_style_of

    records = read_records(rollouts)
    header = read_header(rollouts)
    bench = schema = None
    bname = benchmark or (header.config.get("benchmark") if header else None)
    if bname:
        from matsql.benchmarks import load_benchmark

        root = data or (Path(header.config["data"]) if header and header.config.get("data") else None)
        bench = load_benchmark(bname, root=root)
        schema = bench.schema_of(schema_style_of([header]))  # the prompts' layout, as the rollout made them

    def digest_of(rec, ci, bi):
        c = rec.candidates[ci]
        b = c.branches[bi]
        return record_prompt_digest(
            fixer.build(rec.question, schema(rec.question.db_id), c.planner.sql, c.exec, b.critiques)
        )

    d = fixer_diagnostics(records, digest_of if bench else None)
    result: dict = {"rollouts": str(rollouts), "static": d.as_dict(), "counterfactual": {}}
    if agents is not None:
        if bench is None:
            raise typer.BadParameter("--benchmark is needed for the counterfactual probe")
        from matsql.backends.registry import make_backend
        from matsql.team import apply_adapters, load_team

        spec = apply_adapters(load_team(agents), adapters)["fixer"]
        backend = make_backend(spec.backend)
        for kind in [k for k in counterfactual.split(",") if k]:
            jobs = []
            for rec in records:
                for c in rec.candidates:
                    b = c.main
                    if b is None or b.fix is None or not b.critiques:
                        continue
                    alt = counterfactual_critiques(rec, c.index, kind)
                    if alt is not None:
                        jobs.append((rec, c, b, alt))
            jobs = jobs[:max_probes]
            base_p = [
                fixer.build(r.question, schema(r.question.db_id), c.planner.sql, c.exec, b.critiques)
                for r, c, b, _ in jobs
            ]
            alt_p = [
                fixer.build(r.question, schema(r.question.db_id), c.planner.sql, c.exec, a)
                for r, c, _, a in jobs
            ]
            # both greedy, so a change is caused by the critique alone
            kw = dict(n=1, temperature=0.0, max_tokens=spec.max_tokens, seed=seed)
            base = backend.generate(base_p, **kw) if jobs else []
            alt = backend.generate(alt_p, **kw) if jobs else []
            changed = sum(fixer.parse(x[0]) != fixer.parse(y[0]) for x, y in zip(base, alt, strict=True))
            result["counterfactual"][kind] = {
                "probes": len(jobs),
                "output_changed": changed,
                "rate": changed / len(jobs) if jobs else None,
            }
    t = Table("measure", "value", "counts", title="fixer diagnostics (E4)")
    r = d.rates()
    t.add_row("critique reaches fixer prompt", _fmt(r["reach"]), f"{d.reach_ok}/{d.reach_checked}")
    t.add_row(
        "SQL changed | some critique incorrect",
        _fmt(r["change_when_incorrect"]),
        f"{d.flagged_changed}/{d.flagged}",
    )
    t.add_row(
        "SQL changed | all critiques correct",
        _fmt(r["change_when_correct"]),
        f"{d.cleared_changed}/{d.cleared}",
    )
    t.add_row("wrong -> right", _fmt(r["wrong_to_right"]), f"{d.wrong_to_right}/{d.planner_wrong}")
    t.add_row("right -> wrong", _fmt(r["right_to_wrong"]), f"{d.right_to_wrong}/{d.planner_right}")
    if d.sampled_branches:
        t.add_row(
            "fixer samples differ | branch sampled",
            _fmt(r["samples_differ"]),
            f"{d.sampled_distinct}/{d.sampled_branches}",
        )
    for kind, v in result["counterfactual"].items():
        t.add_row(
            f"output changed | {kind} critique", _fmt(v["rate"]), f"{v['output_changed']}/{v['probes']}"
        )
    console.print(t)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))


@diagnose_app.command("validators")
def validators_cmd(
    rollouts: list[Path] = typer.Argument(..., help="rollout JSONL file(s)"),
    out: Path | None = typer.Option(None, "--out", help="write the diagnostics JSON here"),
    names: list[str] = typer.Option(
        [], "--name", help="a name per rollout file for the table titles, in order (repeat the option)"
    ),
) -> None:
    """How often each validator's verdict matches the planner SQL, and whether its catches get fixed."""
    from matsql.evaluate.diagnostics import validator_diagnostics
    from matsql.rollout.io import read_records

    if names and len(names) != len(rollouts):
        raise typer.BadParameter(f"{len(names)} --name values for {len(rollouts)} rollout files")
    # file names alone are ambiguous (every run folder holds a rollout.jsonl.gz): then the path
    short = [p.name for p in rollouts]
    titles = names or [p.name if short.count(p.name) == 1 else str(p) for p in rollouts]
    result: dict = {}
    for path, title in zip(rollouts, titles, strict=True):
        diags = validator_diagnostics(read_records(path))
        result[str(path)] = {a: d.as_dict() for a, d in diags.items()}
        if not diags:
            console.print(f"{path}: no critiques (a rollout without validators)")
            continue
        t = Table(title=f"validator diagnostics: {title}")
        t.add_column("measure")
        for a in diags:
            t.add_column(a, justify="right")
        rows = [
            ("critiques", lambda d: str(d.critiques)),
            ("planner SQL wrong", lambda d: _fmt(d.rates()["planner_wrong_share"])),
            ("accuracy (verdict = planner correctness)", lambda d: _fmt(d.rates()["accuracy"])),
            ("balanced accuracy", lambda d: _fmt(d.rates()["balanced_accuracy"])),
            (
                "catch rate | planner wrong",
                lambda d: f"{_fmt(d.rates()['catch_rate'])} ({d.caught}/{d.caught + d.missed})",
            ),
            (
                "false alarms | planner right",
                lambda d: (
                    f"{_fmt(d.rates()['false_alarm_rate'])} ({d.false_alarm}/{d.false_alarm + d.passed})"
                ),
            ),
            ("unknown verdict", lambda d: f"{_fmt(d.rates()['unknown_rate'])} ({d.unknown})"),
            (
                "fixed after a catch",
                lambda d: (
                    f"{_fmt(d.rates()['fixed_after_catch'])} ({d.caught_fixed_right}/{d.caught_fixed_runs})"
                ),
            ),
        ]
        for name, cell in rows:
            t.add_row(name, *[cell(d) for d in diags.values()])
        console.print(t)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
