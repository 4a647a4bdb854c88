"""`matsql select`: the trained selector picks one query per question from a rollout file."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _summary(picks, majority_correct: list[bool]) -> dict:
    def agg(items, maj):
        n = len(items)
        sel = sum(p.correct for p in items)
        pk = sum(p.pass_at_k for p in items)
        return {
            "n": n,
            "selector_ex": 100 * sel / n if n else 0.0,
            "pass_at_k": 100 * pk / n if n else 0.0,
            "pick_rate": 100 * sel / pk if pk else None,
            "majority_ex": 100 * sum(maj) / n if n else 0.0,
            "parse_failures": sum(p.parse_failures for p in items),
        }

    out = {"overall": agg(picks, majority_correct)}
    for d in sorted({p.difficulty for p in picks}):
        idx = [i for i, p in enumerate(picks) if p.difficulty == d]
        out[d] = agg([picks[i] for i in idx], [majority_correct[i] for i in idx])
    return out


def select(
    rollouts: Path = typer.Argument(..., help="rollout JSONL"),
    agents: Path | None = typer.Option(None, "--agents", "-a", help="AGENTS.yaml with a selector entry"),
    out: Path = typer.Option(
        ..., "--out", "-o", help="picks JSONL (a .metrics.json summary is written beside it)"
    ),
    adapters: list[str] = typer.Option(
        [], "--adapter", help="AGENT=PATH override, e.g. selector=runs/x/selector"
    ),
    method: str = typer.Option(
        "knockout",
        "--method",
        help="knockout (the selector model picks among 3 candidates per round until one is left) or majority (vote by execution result)",
    ),
    with_verdicts: bool = typer.Option(
        False, "--with-verdicts", help="feedback-aware: show validator verdicts"
    ),
    seed: int = typer.Option(0, "--seed", help="candidate order shuffle seed (same for both arms)"),
    benchmark: str | None = typer.Option(
        None, "--benchmark", help="for schema text; default: from the rollout header"
    ),
    data: Path | None = typer.Option(None, "--data", help="benchmark root (default MATSQL_DATA)"),
    batch_questions: int = typer.Option(
        64, "--batch-questions", help="questions per selector generation batch"
    ),
) -> None:
    """Drop failing candidates, dedupe by result, let the selector pick; report selector EX,
    pass@K, pick rate and majority EX, overall and by difficulty."""
    from matsql.agents.selector import build_options
    from matsql.evaluate.metrics import question_outcome
    from matsql.evaluate.selection import backend_chooser, knockout, majority_chooser, make_picks
    from matsql.fileio import atomic_write
    from matsql.rollout.io import read_header, read_records, schema_style_of

    records = read_records(rollouts)
    header = read_header(rollouts)
    opts = [build_options(r, seed=seed, with_verdicts=with_verdicts) for r in records]
    if method == "majority":
        choose = majority_chooser
    elif method == "knockout":
        if agents is None:
            raise typer.BadParameter(
                "--agents is needed for the knockout selector (or use --method majority)"
            )
        from matsql.backends.registry import make_backend
        from matsql.benchmarks import load_benchmark
        from matsql.team import apply_adapters, load_team

        team = apply_adapters(load_team(agents), adapters)
        bname = benchmark or (header.config.get("benchmark") if header else None)
        if not bname:
            raise typer.BadParameter("--benchmark is needed: the rollout file has no header naming it")
        root = data or (Path(header.config["data"]) if header and header.config.get("data") else None)
        bench = load_benchmark(bname, root=root)
        spec = team["selector"]
        choose = backend_chooser(
            make_backend(spec.backend), spec, bench.schema_of(schema_style_of([header])), seed=seed
        )
    else:
        raise typer.BadParameter("--method must be knockout or majority")
    results = []
    for i in range(0, len(records), batch_questions):
        results.extend(knockout(records[i : i + batch_questions], opts[i : i + batch_questions], choose))
    winners = [w for w, _, _, _ in results]
    picks = make_picks(
        records,
        opts,
        winners,
        [r for _, r, _, _ in results],
        [f for _, _, f, _ in results],
        [t for _, _, _, t in results],
    )
    maj = [bool(question_outcome(r).majority) for r in records]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        for p in picks:
            f.write(json.dumps(asdict(p)) + "\n")
    summary = _summary(picks, maj) | {
        "method": method,
        "with_verdicts": with_verdicts,
        "seed": seed,
        "rollouts": str(rollouts),
    }
    out.with_suffix(".metrics.json").write_text(json.dumps(summary, indent=2))
    t = Table(
        "split", "n", "selector EX", "pass@K", "pick rate", "majority EX", title=f"selection ({method})"
    )
    for k, v in summary.items():
        if isinstance(v, dict):
            pr = "-" if v["pick_rate"] is None else f"{v['pick_rate']:.2f}"
            t.add_row(
                k,
                str(v["n"]),
                f"{v['selector_ex']:.2f}",
                f"{v['pass_at_k']:.2f}",
                pr,
                f"{v['majority_ex']:.2f}",
            )
    console.print(t)
