"""CLI commands of the evaluate package: metrics, compare, report (select and diagnose: the lead).

Thin I/O shells: read files, call the pure functions of metrics/statistics/report, print with
rich, write artefacts. Bad input exits with code 2 and a message naming the file and line; a
``compare --min-gap`` whose CI lower bound does not clear the gap exits with code 1.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from matsql.evaluate.metrics import METRICS, MetricSummary
from matsql.evaluate.outcomes import OutcomeError, load_arm
from matsql.evaluate.plots import bootstrap_figure, difference_figure
from matsql.evaluate.portable import portable_path
from matsql.evaluate.report import (
    RunRow,
    build_row,
    comparison_markdown,
    fmt_pct,
    to_json,
    to_markdown,
    write_report,
)
from matsql.evaluate.statistics import DEFAULT_RESAMPLES, compare_arms

err_console = Console(stderr=True)


def _console() -> Console:
    """stdout console; when piped, wide enough that tables are never truncated."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


_MISSING_HELP = "questions whose database is missing: 'wrong' (scored wrong, default) or 'skip' (left out)"


class Missing(StrEnum):
    wrong = "wrong"
    skip = "skip"


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _summary_cells(s: MetricSummary) -> list[str]:
    return [str(s.n_scored), str(s.n_missing_db), *(fmt_pct(s.values[m]) for m in METRICS)]


def metrics(
    files: list[Path] = typer.Argument(
        ..., help="rollout files or run folders (rollout.jsonl [+ picks.jsonl])"
    ),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    by_difficulty: bool = typer.Option(False, "--by-difficulty", help="add one row per difficulty"),
    missing: Missing = typer.Option(Missing.wrong, "--missing", help=_MISSING_HELP),
    common: bool = typer.Option(
        False, "--common", help="score only the questions every file holds (e.g. beside an unfinished run)"
    ),
) -> None:
    """planner@1, pipeline@1, sample@1, pass@K, majority (and selector EX with picks), one row per file."""
    from matsql.evaluate.report import build_rows

    try:
        rows = build_rows(files, missing=missing.value, common=common)
    except (OutcomeError, ValueError) as e:
        raise _fail(str(e)) from None
    if json_out:
        typer.echo(json.dumps(to_json(rows), indent=2))
        return
    table = Table(title="EX (%)", header_style="bold")
    ks = {r.summary.k for r in rows}
    pass_label = rows[0].summary.pass_label if len(ks) == 1 else "pass@K"
    labels = [pass_label if m == "pass@K" else m for m in METRICS]
    for col in ("config", "n", "missing db", *labels, "selector EX", "pick rate"):
        table.add_column(col, justify="left" if col == "config" else "right")
    for r in rows:
        table.add_row(r.name, *_summary_cells(r.summary), fmt_pct(r.selector_ex), fmt_pct(r.pick_rate))
        if by_difficulty:
            _difficulty_rows(table, r)
    _console().print(table)
    for r in rows:
        if r.summary.n_error:
            err_console.print(f"{r.name}: {r.summary.n_error} error record(s), scored wrong", highlight=False)


def _difficulty_rows(table: Table, r: RunRow) -> None:
    for diff, s in r.by_difficulty.items():
        sel = r.selector_by_difficulty.get(diff)
        pick = r.pick_rate_by_difficulty.get(diff)  # over the oracle of what the selector picked among
        table.add_row(f"  {diff}", *_summary_cells(s), fmt_pct(sel), fmt_pct(pick), style="dim")


def _split(arg: str) -> list[Path]:
    return [Path(p.strip()) for p in arg.split(",") if p.strip()]


def compare(
    a: str = typer.Argument(..., help="arm A: an outcomes/picks/rollout file, or comma-separated seed files"),
    b: str = typer.Argument(..., help="arm B: same form as A"),
    metric: str = typer.Option(
        "correct",
        "--metric",
        help="field of outcome/picks files, or for rollout files: planner@1, pipeline@1, sample@1, pass@k, majority, pass@<int>",
    ),
    n_resamples: int = typer.Option(DEFAULT_RESAMPLES, "--n-resamples", min=1, help="bootstrap resamples"),
    seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    min_gap: float | None = typer.Option(None, "--min-gap", help="percentage points"),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="folder for compare.json, compare.md, difference.png/.pdf/.svg (the paired difference and its CI) and bootstrap.png/.pdf/.svg",
    ),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    name_a: str = typer.Option("A", "--name-a", help="name of arm A in the report"),
    name_b: str = typer.Option("B", "--name-b", help="name of arm B in the report"),
    intersect: bool = typer.Option(
        False, "--intersect", help="compare only shared questions (reports how many were dropped)"
    ),
    missing: Missing = typer.Option(Missing.wrong, "--missing", help=_MISSING_HELP),
) -> None:
    """Paired comparison A - B: bootstrap CI (plain and by db_id), exact McNemar, MDE.

    Exits 1 when --min-gap is given and the CI lower bound (pp) does not clear it.
    """
    files_a, files_b = _split(a), _split(b)
    try:
        arm_a = load_arm(files_a, metric, name=name_a, missing=missing.value)
        arm_b = load_arm(files_b, metric, name=name_b, missing=missing.value)
        for q, db in arm_a.db_of.items():
            if arm_b.db_of.get(q, db) != db:
                raise OutcomeError(
                    f"question {q}: db_id {db!r} in {name_a} but {arm_b.db_of[q]!r} in {name_b}"
                )
        result = compare_arms(
            arm_a.correct,
            arm_b.correct,
            {**arm_b.db_of, **arm_a.db_of},
            n_resamples=n_resamples,
            seed=seed,
            min_gap_pp=min_gap,
            intersect=intersect,
            name_a=name_a,
            name_b=name_b,
            seeds_a=arm_a.ex_per_seed,
            seeds_b=arm_b.ex_per_seed,
        )
    except (OutcomeError, ValueError) as e:
        raise _fail(str(e)) from None

    def show(files: list[Path]) -> str:
        return ", ".join(portable_path(f, out) for f in files)

    sources = {name_a: show(files_a), name_b: show(files_b), "metric": metric}
    payload = {**result.model_dump(mode="json"), "sources": sources}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        (out / "compare.md").write_text(comparison_markdown(result, sources), encoding="utf-8")
        difference_figure(result, out / "difference")
        bootstrap_figure(result, out / "bootstrap")
    if json_out:
        typer.echo(json.dumps(payload, indent=2))
    else:
        _console().print(comparison_markdown(result, sources), markup=False, highlight=False)
    if min_gap is not None and not result.claim:
        raise typer.Exit(code=1)


def report(
    runs: list[Path] = typer.Argument(
        ..., help="run folders (rollout.jsonl [+ picks.jsonl]) or rollout files"
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="folder for report.md/.csv/.tex (the table), report.json and report.png/.pdf/.svg (EX per team with 95% intervals)",
    ),
    names: list[str] = typer.Option([], "--name", help="config name per run, in order (repeat the option)"),
    missing: Missing = typer.Option(Missing.wrong, "--missing", help=_MISSING_HELP),
) -> None:
    """The results table: config | planner@1 | pipeline@1 | pass@K | majority | selector EX | pick rate."""
    if names and len(names) != len(runs):
        raise _fail(f"{len(names)} --name values for {len(runs)} runs")
    try:
        rows = [build_row(r, names[i] if names else None, missing=missing.value) for i, r in enumerate(runs)]
    except (OutcomeError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(to_markdown(rows, missing.value, out))
    if out is not None:
        for path in write_report(rows, out, missing.value):
            err_console.print(f"wrote {path}", highlight=False)
