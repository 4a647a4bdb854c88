"""`matsql rollout`: K-candidate pipeline rollouts to an append-only JSONL file."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from matsql.benchmarks.schema import DEFAULT_STYLE, styles
from matsql.rollout.gating import POLICIES

if TYPE_CHECKING:
    from matsql.rollout.config import RolloutConfig
    from matsql.team import Team

console = Console(stderr=True)


def schema_style_option(default: str | None, note: str) -> Any:
    """``--schema-style``: the prompts' schema layout (a style of schema_format.yaml)."""
    return typer.Option(
        default, "--schema-style", help=f"Schema layout in prompts: {', '.join(styles())}; {note}."
    )


def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    if not shard:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError as e:
        raise typer.BadParameter("--shard must look like I/N, e.g. 0/4") from e
    if not 0 <= i < n:
        raise typer.BadParameter("--shard I/N needs 0 <= I < N")
    return i, n


def rollout(
    benchmark: str = typer.Option(
        ..., "--benchmark", "-b", help="spider-dev, spider-train, bird-minidev, bird-dev, minibench, ..."
    ),
    agents: Path = typer.Option(..., "--agents", "-a", help="AGENTS.yaml: backend and decoding per agent"),
    adapters: list[str] = typer.Option([], "--adapter", help="AGENT=PATH adapter override (repeatable)"),
    out: Path = typer.Option(..., "--out", "-o", help="rollout JSONL (resumed if it exists)"),
    k: int = typer.Option(8, "--k", help="planner candidates per question"),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="planner sampling temperature"),
    greedy_first: bool = typer.Option(
        False,
        "--greedy-first/--all-sampled",
        help="candidate 0 greedy (gives planner@1, pipeline@1); default: all K sampled at --temperature "
        "(at --temperature 0 candidate 0 is greedy either way)",
    ),
    gate: str = typer.Option("exec_error_or_critique", "--gate", help=f"one of {', '.join(POLICIES)}"),
    branches: int = typer.Option(1, "--branches", help="critique samples per candidate (label-time: K)"),
    fix_all: bool = typer.Option(False, "--fix-all", help="label-time: run the fixer on every branch"),
    fixer_samples: int = typer.Option(1, "--fixer-samples", help="fixer samples per branch"),
    fixer_temperature: float | None = typer.Option(
        None,
        "--fixer-temperature",
        help="fixer sampling temperature (default: the agents file's); 1.0 for critique-aware fixer data",
    ),
    validators: str = typer.Option(
        "val-sel,val-cond", "--validators", help='comma-separated validators to run ("" for none)'
    ),
    planner_from: Path | None = typer.Option(
        None, "--planner-from", help="reuse planner candidates of this rollout"
    ),
    seed: int = typer.Option(
        0, "--seed", help="run seed: every sample is a function of it, the prompt and its index"
    ),
    batch_questions: int = typer.Option(16, "--batch-questions", help="questions per generation batch"),
    limit: int | None = typer.Option(None, "--limit", help="first N questions"),
    sample: int | None = typer.Option(
        None, "--sample", help="a seeded random N questions (benchmark order kept)"
    ),
    offset: int = typer.Option(0, "--offset", help="skip the first N questions (before --limit)"),
    parts: str | None = typer.Option(
        None,
        "--parts",
        help="a seeded partition of the questions into disjoint parts, e.g. sft=600,label=128,heldout=1000",
    ),
    part: str | None = typer.Option(None, "--part", help="the part of --parts to run on"),
    parts_seed: int = typer.Option(0, "--parts-seed", help="the partition's seed (keep it across stages)"),
    shard: str | None = typer.Option(None, "--shard", help="I/N: this process's share of the questions"),
    data: Path | None = typer.Option(None, "--data", help="benchmark root (default MATSQL_DATA)"),
    missing: str = typer.Option(
        "wrong", "--missing", help="questions with a missing database: wrong|skip|error"
    ),
    exec_timeout: float = typer.Option(30.0, "--exec-timeout", help="seconds per SQL query (hard deadline)"),
    schema_style: str = schema_style_option(DEFAULT_STYLE, "recorded in the header; later stages reuse it"),
    ex_mode: str | None = typer.Option(
        None,
        "--ex",
        help="EX rule: bird (set equality) or spider (rows as a bag, ordered when the gold has ORDER BY); "
        "default: the benchmark's official rule",
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="continue an existing output file (its config must match)"
    ),
) -> None:
    """Run planner -> validators -> gate -> fixer over K candidates per question."""
    try:
        _rollout(**locals())
    except typer.Exit:
        raise
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        # one clear line (file:line, the adapter, the backend), no traceback; the file stays resumable
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def _config(
    benchmark, agents, adapters, k, temperature, greedy_first, gate, branches, fix_all, fixer_samples,
    fixer_temperature, validators, planner_from, seed, batch_questions, limit, sample, offset, parts, part,
    parts_seed, shard, data, missing, exec_timeout, schema_style, **_: Any,
) -> tuple[RolloutConfig, Team]:  # fmt: skip
    """The config (what the header records, its hash) and the team of a rollout's options.
    Paths inside the working directory are recorded relative to it (``relative_to_cwd``): a
    plan's absolute paths under the checkout hash alike on every machine, and its committed
    headers name no machine's root."""
    from matsql.evaluate.portable import relative_to_cwd
    from matsql.rollout.config import RolloutConfig
    from matsql.team import apply_adapters, load_team

    def portable_override(item: str) -> str:  # AGENT=PATH; a malformed one is apply_adapters' to refuse
        name, sep, path = item.partition("=")
        return f"{name}={relative_to_cwd(path)}" if sep and path else item

    adapters = [portable_override(a) for a in adapters]
    team = apply_adapters(load_team(agents), adapters)
    cfg = RolloutConfig(
        benchmark=benchmark,
        data=relative_to_cwd(data) if data else None,
        k=k,
        temperature=temperature,
        greedy_first=greedy_first,
        gate=gate,  # type: ignore[arg-type]
        validators=[v for v in validators.split(",") if v],
        branches=branches,
        fix_all=fix_all,
        fixer_samples=fixer_samples,
        fixer_temperature=fixer_temperature,
        seed=seed,
        batch_questions=batch_questions,
        limit=limit,
        sample=sample,
        offset=offset,
        parts=parts,
        part=part,
        parts_seed=parts_seed,
        shard=_parse_shard(shard),
        missing=missing,
        exec_timeout_s=exec_timeout,
        planner_from=relative_to_cwd(planner_from) if planner_from else None,
        team_digest=team.digest(),
        schema_style=schema_style,
    )
    return cfg, team


def config_from_argv(argv: Sequence[str]) -> RolloutConfig:
    """The config a ``matsql rollout ...`` command line (``rollout`` first or not, e.g. a plan
    stage's argv) runs with, so its config hash, without loading a model or a benchmark: parsed
    by the command's own options and built by the code the command runs. It reads the agents
    file (the team's digest is in the hash)."""
    args = list(argv[1:] if argv and argv[0] == "rollout" else argv)
    app = typer.Typer()
    app.command()(rollout)
    cmd = typer.main.get_command(app)
    try:
        ctx = cmd.make_context("rollout", args)
    except typer.TyperException as e:  # typer's click: a missing or unknown option, a bad value
        why = e.format_message() if hasattr(e, "format_message") else str(e)
        raise ValueError(f"not a rollout command line ({why}): {shlex.join(args)}") from None
    return _config(**ctx.params)[0]


def _rollout(
    benchmark, agents, adapters, out, k, temperature, greedy_first, gate, branches, fix_all,
    fixer_samples, fixer_temperature, validators, planner_from, seed, batch_questions, limit,
    sample, offset, parts, part, parts_seed, shard, data, missing, exec_timeout, schema_style, ex_mode, resume,
) -> None:  # fmt: skip
    opts = dict(locals())
    from matsql.benchmarks import load_benchmark
    from matsql.rollout.runner import run_rollout
    from matsql.rollout.services import real_services
    from matsql.sql.compare import MODES
    from matsql.sql.ex_eval import official_rule

    ex_mode = ex_mode or official_rule(benchmark)
    if ex_mode not in MODES:
        raise ValueError(f"--ex {ex_mode!r}: expected one of {', '.join(MODES)}")
    cfg, team = _config(**opts)
    bench = load_benchmark(benchmark, root=data)
    questions = bench.select(missing)
    if bench.missing:
        console.print(
            f"[yellow]{len(bench.missing)} of {bench.name}'s {len(bench.questions)} question(s) need a missing "
            f"database (before any --part/--limit); policy --missing {missing}"
        )
    dump = cfg.model_dump(mode="json") | {
        "agents": {n: vars(s) for n, s in team.agents.items()},
        "ex_mode": ex_mode,
        "models": (identities := team.model_identities()),  # each agent's weights (not in the hash)
    }
    with real_services(cfg, team, bench, ex_mode=ex_mode) as svc:
        for line in team.model_banner(identities):  # once the backends loaded: the weights this run uses
            console.print(
                f"[bold yellow]{line}[/bold yellow]" if "SUBSTITUTED" in line else line,
                highlight=False,
                soft_wrap=True,
            )
        stats = run_rollout(questions, cfg, svc, out, dump, resume=resume)
    console.print(
        f"wrote {int(stats['written'])} record(s) to {out} in {stats['seconds']:.1f}s: "
        f"{stats['questions_per_s']:.2f} questions/s, {stats['tokens_per_s']:,.0f} generated tokens/s"
    )
    from matsql.backends.registry import vllm_swap_notes

    for line in vllm_swap_notes():
        console.print(line, highlight=False)
    _report_errors(stats["errors"])


def _report_errors(errors: dict[str, int]) -> None:
    """Error records written, one line per reason (a corrupt database: once, with its path)."""
    if not errors:
        return
    n = sum(errors.values())
    console.print(f"[yellow]{n} error record(s) (scored wrong; `matsql metrics` counts them):")
    for reason, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        console.print(f"  {count} question(s): {reason}", highlight=False, soft_wrap=True)


def rollout_merge(
    out: Path = typer.Argument(..., help="merged rollout JSONL"),
    shards: list[Path] = typer.Argument(..., help="shard files written with --shard I/N"),
) -> None:
    """Merge the shard files of one rollout (same settings) into one file."""
    from matsql.rollout.io import merge_rollouts

    n = merge_rollouts(shards, out)
    console.print(f"merged {len(shards)} shard(s): {n} record(s) -> {out}")
