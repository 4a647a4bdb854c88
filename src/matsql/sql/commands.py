"""``matsql eval-sql``: execution accuracy (EX) of a predictions file on a benchmark.

A thin shell: read files, call :func:`~matsql.sql.ex_eval.evaluate_predictions`, print with rich.
Bad input exits with code 2 and a message naming the file and line (or key). The EX rule
defaults to the benchmark's official one and is named in every report; ``--out`` writes one
outcome line per question, which ``matsql compare`` and ``matsql report`` read.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from matsql.sql.compare import MODES
from matsql.sql.ex_eval import ExSummary, evaluate_predictions, official_rule
from matsql.sql.executor import Executor
from matsql.sql.predictions import (
    PredictionError,
    Predictions,
    read_prediction_file,
    rollout_predictions,
    sniff_benchmark,
)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a path or a line number is never broken

DIFFICULTY_ORDER = ("simple", "moderate", "challenging", "easy", "medium", "hard", "extra", "unknown")
OUTCOME_LABELS = {
    "missing_db": "missing database",
    "no_prediction": "missing prediction",
    "pred_error": "prediction error",
    "pred_timeout": "prediction timeout",
    "bad_db": "corrupt database",
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
    official = summary.mode == official_rule(summary.benchmark)
    table = Table(
        title=f"EX on {summary.benchmark} ({summary.mode} rule{'' if official else ', not the official one'})"
    )
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
    if summary.bad_lines:
        table.add_row("[dim]bad prediction lines (unscored)[/dim]", str(len(summary.bad_lines)), "", "")
    return table


def eval_sql(
    predictions: Path = typer.Argument(
        ...,
        help="BIRD official JSON ({'0': 'SQL\\t----- bird -----\\tdb_id'}) or JSONL ({question_id, sql}; "
        "a picks file of `matsql select` works too); .gz is read gunzipped",
    ),
    benchmark: str | None = typer.Option(
        None,
        "--benchmark",
        "-b",
        help="benchmark name (see `matsql data`); required unless the file's question ids name it "
        "(spider-dev-12)",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="data root (default: $MATSQL_DATA or ../shared/data)"
    ),
    missing: str = typer.Option(
        "wrong", "--missing", help="questions whose database is missing: wrong | skip | error"
    ),
    ex: str | None = typer.Option(
        None,
        "--ex",
        help="EX rule: bird (set equality) | spider (bag of rows, ordered when the gold has ORDER BY); "
        "default: the benchmark's official rule",
    ),
    exec_timeout: float | None = typer.Option(
        None, "--exec-timeout", help="seconds per query [default: 30, as BIRD's script]"
    ),
    workers: int = typer.Option(0, "--workers", help="SQLite worker processes (0: min(4, CPUs))"),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="score the first N questions of the benchmark only (as rollout --limit)"
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="write one outcome line per question (question_id, db_id, difficulty, correct, outcome, "
        "rule): what `matsql compare` reads",
    ),
    rollout_metric: str | None = typer.Option(
        None,
        "--rollout-metric",
        help="PREDICTIONS is a rollout file: score its planner@1 (greedy planner SQL), pipeline@1 "
        "(the greedy candidate's final SQL), majority (the voted candidate's final SQL) or pass@k "
        "(right if any candidate's final SQL is)",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="refuse a file with bad lines instead of scoring the rest"
    ),
    json_out: bool = typer.Option(False, "--json", help="print machine-readable JSON instead of a table"),
    mode_old: str | None = typer.Option(None, "--mode", hidden=True, help="deprecated: --ex"),
    timeout_old: float | None = typer.Option(
        None, "--timeout", hidden=True, help="deprecated: --exec-timeout"
    ),
) -> None:
    """Execution accuracy of predicted SQL under the benchmark's official EX rule: overall, per
    difficulty, with missing databases and missing predictions counted as wrong. Bad lines are
    named by number and left unscored (their questions count as wrong)."""
    from matsql.benchmarks import BENCHMARKS, load_benchmark  # heavy-ish; keep `matsql --help` fast

    if mode_old is not None:
        err_console.print("[yellow]--mode is deprecated: use --ex[/yellow]")
        ex = ex or mode_old
    if timeout_old is not None:
        err_console.print("[yellow]--timeout is deprecated: use --exec-timeout[/yellow]")
        exec_timeout = exec_timeout if exec_timeout is not None else timeout_old
    if ex is not None and ex not in MODES:
        raise _fail(f"--ex must be one of {', '.join(MODES)}, got {ex!r}")
    if missing not in ("wrong", "skip", "error"):
        raise _fail(f"--missing must be wrong, skip or error, got {missing!r}")
    if not predictions.is_file():
        raise _fail(f"{predictions}: no such file")
    from_rollout: dict[str, list[str]] | None = None
    if rollout_metric is not None:
        try:
            from_rollout, named = rollout_predictions(predictions, rollout_metric)
        except PredictionError as e:
            raise _fail(str(e)) from None
    else:
        named = sniff_benchmark(predictions, BENCHMARKS)
    if benchmark is None:
        if named is None:
            raise _fail(
                f"{predictions} does not say which benchmark it is for (BIRD JSON, or question ids "
                f"without a benchmark name): pass -b, one of {', '.join(BENCHMARKS)}"
            )
        benchmark = named
    elif named is not None and named != benchmark:
        raise _fail(f"{predictions}: its question ids are {named}'s, but -b {benchmark} was given")
    try:
        bench = load_benchmark(benchmark, root=data)
        if from_rollout is not None:
            known = {q.question_id for q in bench.questions}
            stray = sorted(set(from_rollout) - known)
            if stray:
                raise PredictionError(f"{predictions}: question {stray[0]} is not in {bench.name}")
            got = Predictions(from_rollout)
        else:
            got = read_prediction_file(predictions, bench.questions, bench.name)
        if strict:
            got.refuse_bad_lines(predictions)
        questions = bench.select(missing)  # type: ignore[arg-type]
        if limit is not None:
            first = {q.question_id for q in bench.questions[:limit]}
            questions = [q for q in questions if q.question_id in first]
            extra = sorted(set(got.sql) - first)
            if extra:
                raise PredictionError(
                    f"{predictions}: {len(extra)} prediction(s) beyond the first {limit} questions "
                    f"(e.g. {extra[0]}); raise --limit or drop them"
                )
    except (PredictionError, ValueError, FileNotFoundError, RuntimeError) as e:
        raise _fail(str(e)) from None
    for _, why in got.bad_lines[:20]:
        err_console.print(f"[yellow]skipped[/yellow] {why}", highlight=False)
    if len(got.bad_lines) > 20:
        err_console.print(f"[yellow]... and {len(got.bad_lines) - 20} more bad line(s)[/yellow]")
    if got.bad_lines:
        err_console.print(
            f"[yellow]{predictions}: {len(got.bad_lines)} bad line(s) left unscored: "
            f"{', '.join(str(n) for n, _ in got.bad_lines)}[/yellow]",
            highlight=False,
        )

    mode = ex or official_rule(bench.name)
    db_paths = {db: bench.db_path(db) for db in {q.db_id for q in questions} if bench.has_db(db)}
    timeout_s = 30.0 if exec_timeout is None else exec_timeout
    with Executor(workers=workers, timeout_s=timeout_s, keep_rows=False) as runner:
        summary = evaluate_predictions(
            questions,
            got.sql,
            db_paths,
            runner,
            benchmark=bench.name,
            mode=mode,
            n_questions=len(bench.questions) if limit is None else min(limit, len(bench.questions)),
        )
        bad_dbs = dict(getattr(runner, "bad_databases", {}))
    summary.bad_lines = [why for _, why in got.bad_lines]
    for path, error in sorted(bad_dbs.items()):
        n = sum(
            1
            for q in questions
            if summary.per_question[q.question_id] == "bad_db" and str(db_paths[q.db_id]) == path
        )
        err_console.print(
            f"[red]database {path} is corrupt ({error.rpartition(': ')[2]}): {n} question(s) counted wrong[/red]",
            highlight=False,
        )
    if out is not None:
        from matsql.evaluate.outcomes import write_outcomes

        rows = [
            {
                "question_id": q.question_id,
                "db_id": q.db_id,
                "difficulty": q.difficulty,
                "correct": summary.per_question[q.question_id] == "correct",
                "outcome": summary.per_question[q.question_id],
                "rule": mode,
            }
            for q in questions
        ]
        write_outcomes(out, rows)  # a .gz name: gzipped, mtime 0 (the same bytes every run)
        err_console.print(f"wrote {len(questions)} question outcome(s) to {out}", highlight=False)
    if json_out:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        console.print(render(summary))
        console.print(f"EX rule: {summary.rule}", highlight=False)
