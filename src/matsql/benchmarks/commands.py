"""``matsql data ...``: inspect benchmark data and build the minibench (thin CLI shell)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from matsql.benchmarks.base import Benchmark
from matsql.benchmarks.check import CheckReport, run_gold, summarize
from matsql.benchmarks.minibench import build_minibench
from matsql.benchmarks.paths import BenchmarkDataError
from matsql.benchmarks.registry import BENCHMARKS, load_benchmark

data_app = typer.Typer(
    help="Benchmark data: check a benchmark folder, build the minibench.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=2)


def render(report: CheckReport) -> Table:
    table = Table(title=f"{report.benchmark}  ({report.db_dir})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("questions", str(report.questions))
    table.add_row("runnable (database present)", str(report.runnable))
    table.add_row("missing database", str(report.missing))
    for db, n in report.missing_dbs.items():
        table.add_row(f"  [dim]{db}[/dim]", f"{n} questions")
    table.add_row("distinct databases", f"{report.distinct_dbs} ({report.present_dbs} present)")
    if report.gold_checked:
        table.add_row("gold SQL runs", f"{report.gold_ok} / {report.runnable}")
        table.add_row("  [dim]of which empty result[/dim]", str(report.gold_empty))
        for f in report.gold_failed[:10]:
            table.add_row(
                f"  [red]{f['question_id']}[/red] ({f['db_id']})", f"{f['status']}: {(f['error'] or '')[:60]}"
            )
        if len(report.gold_failed) > 10:
            table.add_row("  [dim]...[/dim]", f"{len(report.gold_failed) - 10} more failures")
    table.add_row(
        f"[bold]difficulty[/bold] [dim]{report.difficulty_source}[/dim]", "questions / runnable / gold ok"
    )
    for d, c in report.by_difficulty.items():
        table.add_row(f"  {d}", f"{c.questions} / {c.runnable} / {c.gold_ok if report.gold_checked else '-'}")
    return table


@data_app.command("check")
def check(
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help=f"one of: {', '.join(BENCHMARKS)}")],
    data: Annotated[
        Path | None, typer.Option("--data", help="data folder (default $MATSQL_DATA or ../shared/data)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    execute: Annotated[bool, typer.Option("--exec/--no-exec", help="run the gold SQL")] = True,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds per gold query")] = 30.0,
    workers: Annotated[int, typer.Option(help="SQL worker processes (0: auto)")] = 0,
) -> None:
    """Count questions, runnable questions, missing databases and gold queries that execute."""
    try:
        bench: Benchmark = load_benchmark(benchmark, data)
    except (BenchmarkDataError, ValueError) as e:
        raise _fail(str(e)) from None
    gold = run_gold(bench, timeout_s=timeout_s, workers=workers) if execute else None
    report = summarize(bench, gold)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render(report))


@data_app.command("minibench")
def minibench(
    out: Annotated[Path, typer.Argument(help="folder to write (BIRD layout)")],
    seed: Annotated[int, typer.Option(help="generation seed; same seed, same bytes")] = 0,
    force: Annotated[bool, typer.Option("--force", help="replace OUT if it exists")] = False,
) -> None:
    """Generate the built-in minibench (SQLite databases + questions) from a seed, no download."""
    try:
        manifest = build_minibench(out, seed, overwrite=force)
    except FileExistsError as e:
        raise _fail(str(e)) from None
    c = manifest["counts"]
    console.print(
        f"minibench seed {seed}: {c['databases']} databases, {c['train']} train / {c['dev']} dev questions -> {out}"
    )
