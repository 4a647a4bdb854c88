"""`matsql select`: the trained selector, or a model-free rule, picks one query per question."""

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
    rollouts: list[Path] = typer.Argument(
        ...,
        help="rollout JSONL file(s); several (e.g. spider-dev and a spider-train split of one seed) "
        "give one picks file over all their questions",
    ),
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
        help="knockout (the selector model picks among 3 options per round until one is left), or a "
        "model-free rule: majority (vote by the final candidates' execution results), union-vote (vote "
        "over every SQL the pipeline ran: final candidates and the planner SQL the fixer replaced), "
        "verdict-vote, approved-first, majority-verdict-tiebreak",
    ),
    options_from: str = typer.Option(
        "final",
        "--options",
        help="knockout only: the options the selector model sees: final (the final candidates) or "
        "union (also the planner SQL the fixer replaced)",
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
    """Drop failing candidates, dedupe by result, let the selector model (knockout) or a model-free
    rule (--method) pick; report selector EX, pass@K, pick rate and majority EX, overall and by
    difficulty."""
    from matsql.agents.selector import build_options
    from matsql.evaluate.metrics import question_outcome
    from matsql.evaluate.selection import PICK_RULES, rule_picks
    from matsql.fileio import atomic_write
    from matsql.rollout.io import read_header, read_records

    if method not in ("knockout", *PICK_RULES):
        raise typer.BadParameter(f"--method must be knockout or one of {', '.join(PICK_RULES)}")
    if options_from not in ("final", "union"):
        raise typer.BadParameter("--options must be final or union")
    files = [(path, read_records(path), read_header(path)) for path in rollouts]
    records = [r for _, recs, _ in files for r in recs]
    seen: dict[str, Path] = {}
    for path, recs, _ in files:
        for r in recs:
            if r.question_id in seen:
                raise typer.BadParameter(f"question {r.question_id} is in {seen[r.question_id]} and {path}")
            seen[r.question_id] = path
    if method in PICK_RULES:  # model-free: no agents, no benchmark
        picks = rule_picks(records, PICK_RULES[method], seed=seed)
    else:
        union = options_from == "union"
        per_file = [
            (
                recs,
                [build_options(r, seed=seed, with_verdicts=with_verdicts, union=union) for r in recs],
                header,
            )
            for _, recs, header in files
        ]
        picks = _knockout_picks(per_file, agents, adapters, benchmark, data, seed, batch_questions, union)
    maj = [bool(question_outcome(r).majority) for r in records]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        for p in picks:
            f.write(json.dumps(asdict(p)) + "\n")
    summary = _summary(picks, maj) | {
        "method": method,
        "options": ("union" if PICK_RULES[method].union else "final")
        if method in PICK_RULES
        else options_from,
        "with_verdicts": with_verdicts,
        "seed": seed,
        "rollouts": ", ".join(str(p) for p in rollouts),
    }
    out.with_suffix(".metrics.json").write_text(json.dumps(summary, indent=2))
    _print(summary, method)


def _knockout_picks(files, agents, adapters, benchmark, data, seed, batch_questions, oracle_of_options):
    """The selector model's MATS knockout over each record's options, in question batches; one
    backend for every file, each file with its own benchmark's schemas (from its header)."""
    from matsql.backends.registry import make_backend
    from matsql.benchmarks import load_benchmark
    from matsql.evaluate.selection import backend_chooser, knockout, make_picks
    from matsql.rollout.io import schema_style_of
    from matsql.team import apply_adapters, load_team

    if agents is None:
        raise typer.BadParameter(
            "--agents is needed for the knockout selector (or use a rule: --method majority)"
        )
    team = apply_adapters(load_team(agents), adapters)
    spec = team["selector"]
    backend = make_backend(spec.backend)
    picks = []
    for records, options, header in files:
        bname = benchmark or (header.config.get("benchmark") if header else None)
        if not bname:
            raise typer.BadParameter("--benchmark is needed: the rollout file has no header naming it")
        root = data or (Path(header.config["data"]) if header and header.config.get("data") else None)
        schema = load_benchmark(bname, root=root).schema_of(schema_style_of([header]))
        choose = backend_chooser(backend, spec, schema, seed=seed)
        results = []
        for i in range(0, len(records), batch_questions):
            results.extend(
                knockout(records[i : i + batch_questions], options[i : i + batch_questions], choose)
            )
        got = make_picks(
            records,
            options,
            [w for w, _, _, _ in results],
            [r for _, r, _, _ in results],
            [f for _, _, f, _ in results],
            [t for _, _, _, t in results],
        )
        if oracle_of_options:  # the oracle over what the selector saw
            for p, o in zip(got, options, strict=True):
                p.pass_at_k = any(x.correct for x in o)
        picks += got
    return picks


def _print(summary: dict, method: str) -> None:
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
