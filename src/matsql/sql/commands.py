"""``matsql eval-sql``: execution accuracy (EX) of a predictions file on a benchmark.

A thin shell: read files, call :func:`~matsql.sql.ex_eval.evaluate_predictions`, print with rich.
Bad input exits with code 2 and a message naming the file and line (or key).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from matsql.sql.compare import MODES
from matsql.sql.ex_eval import ExSummary, evaluate_predictions
from matsql.sql.executor import Executor
from matsql.sql.predictions import PredictionError, read_predictions

console = Console()
err_console = Console(stderr=True)

DIFFICULTY_ORDER = ("simple", "moderate", "challenging", "easy", "medium", "hard", "extra", "unknown")
OUTCOME_LABELS = {
    "missing_db": "missing database",
    "no_prediction": "missing prediction",
    "pred_error": "prediction error",
    "pred_timeout": "prediction timeout",
    "gold_failed": "gold query failed",
    "wrong": "wrong result",
    "correct": "correct",
}


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=2)


def _difficulty_key(name: str) -> tuple[int, str]:
    return (DIFFICULTY_ORDER.index(name) if name in DIFFICULTY_ORDER else len(DIFFICULTY_ORDER), name)


def render(summary: ExSummary) -> Table:
    table = Table(title=f"EX on {summary.benchmark} ({summary.mode} rule)")
    table.add_column("split")
    table.add_column("n", justify="right")
    table.add_column("correct", justify="right")
    table.add_column("EX %", justify="right")
    for name in sorted(summary.by_difficulty, key=_difficulty_key):
        s = summary.by_difficulty[name]
        table.add_row(name, str(s.n), str(s.correct), f"{100 * s.ex:.2f}")
    o = summary.overall
    table.add_row(
        "[bold]all[/bold]", str(o.n), str(o.correct), f"[bold]{100 * o.ex:.2f}[/bold]", end_section=True
    )
    for key, label in OUTCOME_LABELS.items():
        table.add_row(f"[dim]{label}[/dim]", str(summary.outcomes.get(key, 0)), "", "")
    if summary.n_skipped_missing_db:
        table.add_row("[dim]skipped (missing database)[/dim]", str(summary.n_skipped_missing_db), "", "")
    return table


def eval_sql(
    predictions: Path = typer.Argument(
        ..., help="BIRD official JSON ({'0': 'SQL\\t----- bird -----\\tdb_id'}) or JSONL ({question_id, sql})"
    ),
    benchmark: str = typer.Option(
        "bird-minidev", "--benchmark", "-b", help="benchmark name (see `matsql data`)"
    ),
    data: Path | None = typer.Option(
        None, "--data", help="data root (default: $MATSQL_DATA or ../shared/data)"
    ),
    missing: str = typer.Option(
        "wrong", "--missing", help="questions whose database is missing: wrong | skip | error"
    ),
    mode: str = typer.Option(
        "bird", "--mode", help="EX rule: bird (set equality) | spider (test-suite result_eq)"
    ),
    timeout: float = typer.Option(30.0, "--timeout", help="seconds per query (BIRD: 30)"),
    workers: int = typer.Option(0, "--workers", help="SQLite worker processes (0: min(4, CPUs))"),
    json_out: bool = typer.Option(False, "--json", help="print machine-readable JSON instead of a table"),
) -> None:
    """Execution accuracy of predicted SQL: overall, per difficulty, with missing databases and
    missing predictions counted as wrong."""
    from matsql.benchmarks import load_benchmark  # heavy-ish; keep `matsql --help` fast

    if mode not in MODES:
        raise _fail(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if missing not in ("wrong", "skip", "error"):
        raise _fail(f"--missing must be wrong, skip or error, got {missing!r}")
    try:
        bench = load_benchmark(benchmark, root=data)
        preds = read_predictions(predictions, bench.questions, bench.name)
        questions = bench.select(missing)  # type: ignore[arg-type]
    except (PredictionError, ValueError, FileNotFoundError, RuntimeError) as e:
        raise _fail(str(e)) from None

    db_paths = {db: bench.db_path(db) for db in {q.db_id for q in questions} if bench.has_db(db)}
    with Executor(workers=workers, timeout_s=timeout) as ex:
        summary = evaluate_predictions(
            questions, preds, db_paths, ex, benchmark=bench.name, mode=mode, n_questions=len(bench.questions)
        )
    if json_out:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        console.print(render(summary))
