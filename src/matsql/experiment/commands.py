"""`matsql experiment run|status|check|collect`, `matsql demo`, `matsql publish`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
experiment_app = typer.Typer(
    help="Run a study plan (a YAML graph of stages) with resumable stages.", no_args_is_help=True
)


def _scalar(text: str) -> object:
    """A command-line value as YAML reads it (``4`` -> 4, ``true`` -> True), else the text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, int | float | bool) else text


def _overrides(sets: list[str], option: str = "--set") -> dict[str, str]:
    out = {}
    for s in sets:
        if "=" not in s:
            raise typer.BadParameter(f"{option} expects KEY=VALUE, got {s!r}")
        k, v = s.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _load(plan: Path, sets: list[str]):
    from matsql.experiment.plan import PlanError, load_plan

    try:
        return load_plan(plan, overrides=_overrides(sets))
    except PlanError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from e


@experiment_app.command("collect")
def collect(
    plan: Path = typer.Argument(..., help="plan YAML whose run folder is gathered"),
    out: Path = typer.Option(..., "--out", help="results folder to write (e.g. results/study-spider)"),
    adapters: str = typer.Option(
        "", "--adapters", help="training stages whose LoRA adapters to copy (comma-separated)"
    ),
    adapters_out: Path | None = typer.Option(
        None, "--adapters-out", help="where adapters go (default OUT/adapters)"
    ),
    skip: str = typer.Option("", "--skip", help="stages whose files stay behind (comma-separated)"),
    sets: list[str] = typer.Option([], "--set", help="the same overrides the run used"),
) -> None:
    """Gather a run's rollouts and picks (gzipped), reports, label yields, training metrics and
    stage times into a folder small enough to commit."""
    from matsql.experiment.collect import collect_run

    p = _load(plan, sets)
    names = [a for a in adapters.split(",") if a]
    try:
        got = collect_run(
            p, out, adapters=names, adapters_dest=adapters_out, skip=[s for s in skip.split(",") if s]
        )
    except (KeyError, FileNotFoundError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from e
    console.print(
        f"{len(got.stage_rows)} done stage(s), {len(got.files)} file(s) -> {out}"
        + (f"; adapters of {', '.join(names)}" if names else "")
        + (f"; not done: {', '.join(got.missing)}" if got.missing else "")
    )


@experiment_app.command("run")
def run(
    plan: Path = typer.Argument(..., help="plan YAML (see experiments/)"),
    until: str | None = typer.Option(
        None, "--until", help="run the stages these need, and them (comma-separated stage names)"
    ),
    only: str | None = typer.Option(None, "--only", help="run this stage alone (its inputs must be done)"),
    force: bool = typer.Option(False, "--force", help="rerun the --only/--until stage even if done"),
    jobs: int = typer.Option(
        1, "--jobs", "-j", help="stages run at once when their inputs are done (GPUs are shared out)"
    ),
    executor: str = typer.Option(
        "local", "--executor", help="local (subprocesses here) | slurm (submitit jobs)"
    ),
    job_name: str = typer.Option("vl", "--job-name", help="SLURM job name prefix (jobs are PREFIX-STAGE)"),
    partition: str | None = typer.Option(
        None, "--partition", help="SLURM partition (overrides the plan's slurm:)"
    ),
    account: str | None = typer.Option(None, "--account", help="SLURM account (overrides the plan's slurm:)"),
    qos: str | None = typer.Option(
        None, "--qos", help="SLURM quality of service (overrides the plan's slurm:)"
    ),
    slurm: list[str] = typer.Option(
        [],
        "--slurm",
        help="extra SLURM parameter KEY=VALUE for every job (repeatable), e.g. --slurm constraint=h100",
    ),
    sets: list[str] = typer.Option([], "--set", help="override run_dir or vars.NAME, e.g. --set vars.k=8"),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="after a failure, run on what does not need the failed stage"
    ),
    keep_going_old: bool = typer.Option(False, "-k", hidden=True, help="deprecated: --keep-going"),
    gpu_slots: int = typer.Option(
        1, "--gpu-slots", help="processes that may share one GPU (small models: 2-3 finish more per minute)"
    ),
    prefer: str | None = typer.Option(
        None,
        "--prefer",
        help="when GPUs are short, start what these stages need first (comma-separated; then the critical path)",
    ),
    deadline: str | None = typer.Option(
        None,
        "--deadline",
        help="start no stage after this time: unix seconds, or +SECONDS from now (a machine lent until "
        "then); the rest is left for the next run",
    ),
    warm: bool = typer.Option(
        False,
        "--warm",
        help="run generation stages (rollout, select, diagnose, train pick-checkpoint) in a process kept "
        "per GPU slot, so imports and the vLLM engine carry over between stages (matsql.experiment.worker)",
    ),
    train_deadline: str | None = typer.Option(
        None,
        "--train-deadline",
        help="start no SFT/ORPO training stage after this time (same forms as --deadline): a run cut "
        "off loses its minutes, and its checkpoint pick must run where it trained",
    ),
) -> None:
    """Run a plan; finished stages (same command, same inputs) are skipped."""
    from matsql.experiment.constraints import check_study, eval_protocol
    from matsql.experiment.executors import LocalExecutor, SlurmExecutor, StageFailed
    from matsql.experiment.plan import PlanError
    from matsql.experiment.runner import Deadlines, run_plan, stage_status

    due = Deadlines(_when(deadline, "--deadline"), _when(train_deadline, "--train-deadline"))
    p = _load(plan, sets)
    if keep_going_old:
        console.print("[yellow]-k is deprecated (rollout's --k is K candidates): use --keep-going[/yellow]")
        keep_going = True
    try:
        for line in check_study(p, **eval_protocol(p)):
            console.print(f"[green]check[/green] {line}")
        if warm and executor != "local":
            raise typer.BadParameter("--warm keeps processes on this machine: it needs --executor local")
        if executor == "local":
            ex = LocalExecutor(env=p.env, gpu_slots=gpu_slots, warm=warm)
        elif executor == "slurm":
            cli = {"partition": partition, "account": account, "qos": qos}
            extra = {k: _scalar(v) for k, v in _overrides(slurm, "--slurm").items()}
            params = {**p.slurm, **extra, **{k: v for k, v in cli.items() if v}}
            ex = SlurmExecutor(p.run_dir / "slurm", job_name=job_name, env=p.env, **params)
        else:
            raise typer.BadParameter("--executor must be local or slurm")
        targets = [t.strip() for t in (prefer or "").split(",") if t.strip()]
        outcome = run_plan(
            p,
            ex,
            until=until,
            only=only,
            force=force,
            jobs=jobs,
            keep_going=keep_going,
            prefer=targets,
            deadlines=due,
        )
    except (PlanError, StageFailed) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from e
    ran = [n for n, o in outcome.items() if o == "ran"]
    status = stage_status(p) if any(o in ("deferred", "blocked") for o in outcome.values()) else {}
    later = [n for n, o in outcome.items() if o in ("deferred", "blocked") and status.get(n) != "done"]
    console.print(
        f"[bold]{p.name}[/bold]: {len(ran)} stage(s) ran, {len(outcome) - len(ran) - len(later)} skipped"
        + (f", {len(later)} left for the next run (deadline)" if later else "")
        + f"; run dir {p.run_dir}"
    )


def _when(value: str | None, option: str) -> float | None:
    """``--deadline`` forms: unix seconds, or ``+SECONDS`` from now."""
    import time

    if value is None:
        return None
    try:
        return time.time() + float(value[1:]) if value.startswith("+") else float(value)
    except ValueError:
        raise typer.BadParameter(f"{option} {value!r}: expected unix seconds or +SECONDS") from None


@experiment_app.command("status")
def status(
    plan: Path = typer.Argument(..., help="plan YAML (see experiments/)"),
    sets: list[str] = typer.Option([], "--set", help="the same overrides the run used"),
) -> None:
    """Show each stage: done, stale (and why: which named file, command, input stage or matsql
    version changed) or pending, and its command."""
    from matsql.experiment.runner import stage_report

    p = _load(plan, sets)
    t = Table("stage", "status", "why", "command")
    for name, (st, why) in stage_report(p).items():
        color = {"done": "green", "stale": "yellow"}.get(st, "white")
        t.add_row(name, f"[{color}]{st}[/{color}]", "; ".join(why), p.stages[name].command)
    console.print(t)


@experiment_app.command("check")
def check(
    plan: Path = typer.Argument(..., help="plan YAML (see experiments/)"),
    sets: list[str] = typer.Option([], "--set", help="override run_dir or vars.NAME, e.g. --set vars.k=8"),
) -> None:
    """Validate a plan and the study's by-construction constraints without running anything."""
    from matsql.experiment.constraints import check_study, eval_protocol
    from matsql.experiment.plan import PlanError

    p = _load(plan, sets)
    try:
        lines = check_study(p, **eval_protocol(p))
    except PlanError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from e
    console.print(f"{p.name}: {len(p.stages)} stages, arms {p.arms or '-'}")
    for line in lines:
        console.print(f"[green]ok[/green] {line}")


def publish(
    run_dir: Path = typer.Argument(
        ...,
        help="a run folder (`matsql experiment run`) or a collected results folder (`experiment collect`)",
    ),
    repo: str = typer.Option(..., "--repo", help="ORG/NAME on the Hugging Face Hub"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="write the folder that would be pushed, push nothing"
    ),
    out: Path | None = typer.Option(None, "--out", help="folder to assemble in (default RUN_DIR/publish)"),
    no_weights: bool = typer.Option(False, "--no-weights", help="cards and results only"),
    private: bool = typer.Option(True, "--private/--public", help="visibility of the Hub repository"),
) -> None:
    """Model cards (one folder per adapter: models/<agent>-<iter>-<arm>/), the preference datasets
    with a dataset card, and a README with the results, pushed with huggingface_hub."""
    from matsql.experiment.publish import build_folder, push

    if not ((run_dir / "manifests").is_dir() or (run_dir / "collect.json").is_file()):
        console.print(f"[red]{run_dir} has no manifests/ or collect.json: not a run or results folder[/red]")
        raise typer.Exit(2)
    folder = out or run_dir / "publish"
    try:
        files = build_folder(run_dir, repo, folder, include_weights=not no_weights)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from e
    console.print(f"assembled {folder} ({len(files)} card(s)/README)")
    if dry_run:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                console.print(f"  {p.relative_to(folder)}")
        return
    console.print(push(folder, repo, private=private))


def _repo_root() -> Path:
    """The checkout holding recipes/ and experiments/ (the demo plan refers to both)."""
    here = Path(__file__).resolve()
    for cand in [Path.cwd(), *Path.cwd().parents, *here.parents]:
        if (cand / "recipes" / "tiny").is_dir() and (cand / "experiments" / "agents").is_dir():
            return cand
    raise typer.BadParameter(
        "run `matsql demo` from a matsql checkout (recipes/ and experiments/ are needed)"
    )


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="run folder (resumed if it exists)"),
    sets: list[str] = typer.Option([], "--set", help="override vars.NAME of the demo plan"),
    jobs: int = typer.Option(
        2, "--jobs", "-j", help="stages run at once (the plan gives each one CPU thread)"
    ),
) -> None:
    """The iter2 programme in miniature on the embedded minibench with SmolLM2-135M on a CPU: an
    untrained team, the SFT team and the COLLAB / INDEP arms on the same questions; prints the
    results table, the compares and where the real study's table is."""
    import json
    import time
    from importlib import resources

    from matsql.evaluate.portable import portable_path
    from matsql.experiment.constraints import check_study, eval_protocol
    from matsql.experiment.demo import STUDY_COMMAND, STUDY_DIR, ProgressExecutor
    from matsql.experiment.executors import LocalExecutor, StageFailed
    from matsql.experiment.plan import PlanError, load_plan
    from matsql.experiment.runner import run_plan

    plan_path = Path(str(resources.files("matsql.experiment").joinpath("plans", "demo.yaml")))
    over = {"run_dir": str(out.resolve()), **_overrides(sets)}
    t0 = time.perf_counter()
    ex = None
    try:
        p = load_plan(plan_path, overrides=over, base_dir=_repo_root())
        for line in check_study(p, **eval_protocol(p)):
            console.print(f"[green]check[/green] {line}")
        console.print(f"[bold]{p.name}[/bold]: {len(p.stages)} stages; run folder {portable_path(p.run_dir)}")
        ex = ProgressExecutor(LocalExecutor(env=p.env, echo=False), console=console)
        run_plan(p, ex, jobs=jobs)
    except (PlanError, StageFailed) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from e
    total = time.perf_counter() - t0
    report = p.run_dir / "report" / "report.md"
    if report.exists():
        console.print(report.read_text(), markup=False, highlight=False)
    for stage in ("compare-sft", "compare"):
        cmp_json = p.run_dir / stage / "compare.json"
        if cmp_json.exists():
            c = json.loads(cmp_json.read_text())
            console.print(f"[bold]{c['name_a']} vs {c['name_b']}[/bold]: {c.get('verdict')}")
    ran = [t for t in ex.times if t.ok]
    summary = {
        "seconds_total": round(total, 1),
        "stages_ran": len(ran),
        "stage_seconds": {t.name: round(t.seconds, 1) for t in ex.times},
    }
    (p.run_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(
        f"demo: {len(ran)} stage(s) ran in {total / 60:.1f} min; figures and tables in "
        f"{portable_path(p.run_dir / 'report')} and {portable_path(p.run_dir / 'compare')}"
    )
    console.print(
        f"The real study (Qwen2.5-Coder-0.5B, all 1034 spider-dev questions, K=8): {STUDY_DIR}/README.md, "
        f"table {STUDY_DIR}/report-all/report.md; made with `{STUDY_COMMAND}` on GPUs"
    )
