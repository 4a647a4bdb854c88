"""`matsql train ...`: SFT / ORPO runs from recipes, and SFT data building.

Multi-GPU: the same command under accelerate, e.g.
``accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m matsql.train sft RECIPE``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import typer
import yaml
from rich.console import Console

train_app = typer.Typer(
    help="Train agents: SFT / ORPO on TRL from versioned recipes; build SFT data.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
_console = Console(stderr=True)

_OVERRIDES = typer.Argument(None, help="Recipe overrides as key=value (same as --set).", show_default=False)
_SET = typer.Option([], "--set", help="Override a recipe key: --set trainer.learning_rate=1e-5 (repeatable).")
_DRY = typer.Option(
    False, "--dry-run", help="Validate recipe and data, tokenise, print batch arithmetic; no training."
)
_NPROC = typer.Option(None, "--num-processes", help="Processes for the batch arithmetic of --dry-run.")
_ACC = typer.Option(
    None, "--accelerate-config", help="Read num_processes for --dry-run from this accelerate config."
)
_FORCE = typer.Option(False, "--force", help="Overwrite a finished run of a different recipe in output_dir.")


def num_processes(explicit: int | None, accelerate_config: Path | None) -> int:
    """--num-processes, else the accelerate config's num_processes, else WORLD_SIZE, else 1."""
    if explicit:
        return explicit
    if accelerate_config is not None:
        try:
            cfg = yaml.safe_load(accelerate_config.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise typer.BadParameter(f"accelerate config not found: {accelerate_config}") from None
        n = cfg.get("num_processes")
        if not isinstance(n, int) or n < 1:
            raise typer.BadParameter(
                f"{accelerate_config}: num_processes must be a positive integer, got {n!r}"
            )
        return n
    return int(os.environ.get("WORLD_SIZE", "1"))


def _train(
    method: str, recipe_path: Path, overrides: list[str], dry_run: bool, nproc: int, force: bool
) -> None:
    from matsql.train.config import RecipeError, load_recipe

    try:
        recipe = load_recipe(recipe_path, overrides)
    except RecipeError as e:
        _console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if recipe.method != method:
        _console.print(
            f"[red]{recipe_path}: recipe method is {recipe.method!r}; run `matsql train {recipe.method}`[/red]"
        )
        raise typer.Exit(2)
    from matsql.train import runner

    try:
        if dry_run:
            report = runner.dry_run(recipe, num_processes=nproc)
            typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
            _console.print(
                f"[green]dry run ok[/green]: {report['train']['rows']} train / {report['eval']['rows']} eval rows, "
                f"effective batch size {report['effective_batch_size']} on {nproc} process(es), "
                f"{report['total_steps']} optimizer steps"
            )
            return
        info = runner.run_training(recipe, force=force)
    except (RecipeError, ValueError, FileNotFoundError) as e:
        _console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    finally:
        _close_process_group()
    if info.get("skipped"):
        _console.print(f"{recipe.output_dir}: already trained with this recipe (run.json); nothing to do")
    elif info:
        ev = info["metrics"].get("eval") or {}
        shown = {
            k: round(v, 4)
            for k, v in ev.items()
            if isinstance(v, float) and ("rewards/" in k or k == "eval_loss")
        }
        _console.print(f"[green]trained[/green] {info['kind']} -> {recipe.output_dir} {shown}")


def _close_process_group() -> None:
    """Under accelerate/torchrun, leave the process group before exit (NCCL teardown at
    interpreter exit can crash a rank after training finished)."""
    import sys

    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train_command(method: str, doc: str) -> Callable[..., None]:
    """Register ``matsql train <method>``: the methods share their options and differ only in
    what the recipe must declare, so the command is written once."""

    def command(
        recipe: Path = typer.Argument(..., help=f"Recipe YAML (method: {method})."),
        overrides: list[str] | None = _OVERRIDES,
        set_: list[str] = _SET,
        dry_run: bool = _DRY,
        num_processes_: int | None = _NPROC,
        accelerate_config: Path | None = _ACC,
        force: bool = _FORCE,
    ) -> None:
        _train(
            method,
            recipe,
            [*set_, *(overrides or [])],
            dry_run,
            num_processes(num_processes_, accelerate_config),
            force,
        )

    command.__name__ = command.__qualname__ = method
    command.__doc__ = doc
    return train_app.command(method)(command)


sft = _train_command("sft", "Supervised fine-tuning (completion-only loss) from a recipe.")
orpo = _train_command("orpo", "ORPO on preference pairs (completion-only NLL, safe log-odds) from a recipe.")


@train_app.command("sft-data")
def sft_data(
    agent: str = typer.Option("all", "--agent", help="planner | val-sel | val-cond | fixer | selector | all"),
    benchmark: str = typer.Option(
        ..., "--benchmark", help="Benchmark (train split) for questions and schemas."
    ),
    rollouts: list[Path] = typer.Option(
        [], "--rollouts", help="Rollout JSONL file(s) (validators, fixer, selector)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: <agent>/ datasets folders + <agent>.jsonl."),
    max_per_question: int = typer.Option(4, help="Cap of rows per question (validators, fixer); 0 = no cap."),
    correct_ratio: float | None = typer.Option(
        None, help="Validators: share of 'correct' verdicts (down-sampling)."
    ),
    keep_correct: float = typer.Option(
        0.2, help="Fixer: share of correct candidates kept as unchanged targets."
    ),
    fixer_critiques: str = typer.Option("rollout", help="Fixer critiques: rollout (sampled) | teacher."),
    selector_verdicts: bool = typer.Option(False, help="Selector options carry validator verdicts."),
    test_frac: float = typer.Option(
        0.1, "--test-frac", help="Share of questions written to the test split (eval); as labels build."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Random seed: train/test split, down-sampling, teacher sampling."
    ),
    teacher_file: Path | None = typer.Option(
        None,
        "--teacher",
        help="Team file whose `teacher` entry (any backend) writes the validators' critique text; "
        "verdicts stay execution-grounded. Default: the rule-based teacher.",
    ),
    teacher_resamples: int = typer.Option(
        3, help="--teacher: resample a critique that disagrees with execution up to N times, then fall back."
    ),
    schema_style: str | None = typer.Option(
        None,
        "--schema-style",
        help="Schema layout in prompts (benchmarks/data/schema_format.yaml). Default: the one the "
        "rollouts' header records, else mats.",
    ),
) -> None:
    """Build SFT datasets (TRL prompt-completion) for one agent or all."""
    from matsql.benchmarks import load_benchmark
    from matsql.benchmarks.schema import DEFAULT_STYLE, styles
    from matsql.benchmarks.splits import split_questions
    from matsql.rollout.io import schema_style_of
    from matsql.train import sft_data as sd
    from matsql.train import teacher as tch

    agents = list(sd.SFT_AGENTS) if agent == "all" else [agent]
    if any(a not in sd.SFT_AGENTS for a in agents):
        raise typer.BadParameter(f"--agent must be one of {', '.join(sd.SFT_AGENTS)} or all, got {agent!r}")
    if fixer_critiques not in ("rollout", "teacher"):
        raise typer.BadParameter("--fixer-critiques must be rollout or teacher")
    need_rollouts = [a for a in agents if a != "planner"]
    if need_rollouts and not rollouts:
        if agent != "all":
            raise typer.BadParameter(
                f"--agent {agent} needs --rollouts (it learns from real planner samples)"
            )
        _console.print("[yellow]no --rollouts: building planner data only[/yellow]")
        agents = ["planner"]
    llm_agents = [a for a in agents if a in tch.AGENTS]
    llm = None
    if teacher_file is not None:
        if not llm_agents:
            raise typer.BadParameter(
                "--teacher writes validator critiques: use it with --agent val-sel, val-cond or all"
            )
        try:
            spec = tch.load_teacher(teacher_file, resamples=teacher_resamples, seed=seed)
            for a in llm_agents:
                tch.teacher_template(a)
        except (ValueError, FileNotFoundError) as e:
            raise typer.BadParameter(str(e), param_hint="--teacher") from None
        if spec.temperature == 0 and spec.resamples:
            _console.print(
                "[yellow]teacher temperature is 0: a resample repeats the rejected critique[/yellow]"
            )
    bench = load_benchmark(benchmark)
    records, headers = [], []
    if rollouts and need_rollouts:
        from matsql.labels.io import read_rollouts

        records, headers = read_rollouts(rollouts)
    style = schema_style or schema_style_of(headers)
    if style not in styles():
        raise typer.BadParameter(f"expected one of {', '.join(styles())}", param_hint="--schema-style")
    schema = bench.schema_of(style)
    if teacher_file is not None and records:
        from matsql.backends.registry import make_backend

        try:
            llm = (make_backend(spec.backend, agent="teacher"), spec)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--teacher") from None
        _console.print(
            f"teacher: {spec.model_id} (up to {spec.resamples} resamples per critique)", soft_wrap=True
        )
    cap = max_per_question or None
    summary: dict[str, dict] = {}
    try:
        for a in agents:
            if a == "planner":
                built = sd.planner_examples(bench.runnable, schema)
            elif a in ("val-sel", "val-cond"):
                built = sd.validator_examples(
                    records,
                    schema,
                    a,
                    max_per_question=cap,
                    correct_ratio=correct_ratio,
                    seed=seed,
                    llm=llm,
                )
            elif a == "fixer":
                built = sd.fixer_examples(
                    records,
                    schema,
                    critiques=fixer_critiques,  # type: ignore[arg-type]
                    keep_correct=keep_correct,
                    max_per_question=cap,
                    seed=seed,
                )
            else:
                built = sd.selector_examples(records, schema, with_verdicts=selector_verdicts, seed=seed)
            qids = [r["question_id"] for r in built.rows]
            held = split_questions(qids, {"test": test_frac}, seed, "hash")["test"]
            counts = sd.write_sft(built.rows, out, a, set(held))
            summary[a] = {"rows": counts, "skipped": dict(built.skipped)}
            if built.teacher is not None:
                summary[a]["teacher"] = built.teacher.as_dict()
                _console.print(f"{a} teacher: {built.teacher.line()}", soft_wrap=True)  # one greppable line
            _console.print(f"{a}: {counts} -> {out / a} (skipped: {dict(built.skipped) or 'none'})")
    finally:
        close = getattr(llm[0], "close", None) if llm is not None else None
        if callable(close):  # a served teacher's connections; other backends may have nothing to close
            close()
    meta = {"benchmark": benchmark, "rollouts": [str(p) for p in rollouts], "seed": seed, "agents": summary}
    if style != DEFAULT_STYLE:  # recorded when it is not the default (earlier files stay as they were)
        meta["schema_style"] = style
    if llm is not None:
        meta["teacher"] = {"source": str(teacher_file), **llm[1].identity(llm_agents)}
        settings = {
            "agents": agents,
            "rollout_configs": sorted({h.config_hash for h in headers}),
            "max_per_question": cap,
            "correct_ratio": correct_ratio,
            "keep_correct": keep_correct,
            "fixer_critiques": fixer_critiques,
            "selector_verdicts": selector_verdicts,
            "test_frac": test_frac,
        }
        blob = json.dumps({**{k: v for k, v in meta.items() if k != "agents"}, **settings}, sort_keys=True)
        meta["config_hash"] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    (out / "sft_data.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


@train_app.command("pick-checkpoint")
def pick_checkpoint_cmd(
    run_dir: Path = typer.Argument(
        ..., help="An ORPO/SFT run folder of a validator (its checkpoints/ and final adapter)."
    ),
    agent: str = typer.Option(..., "--agent", help="The validator the run trained: val-sel | val-cond."),
    rollouts: Path = typer.Option(
        ..., "--rollouts", help="Held-out label rollouts (JSONL, plain or .gz) whose candidates are judged."
    ),
    agents: Path = typer.Option(
        ..., "--agents", "-a", help="Agents file: the validator's backend and decoding."
    ),
    benchmark: str = typer.Option(
        ..., "--benchmark", "-b", help="Benchmark the rollouts' questions come from (schemas)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the chosen adapter and pick.json."),
    limit: int | None = typer.Option(None, "--limit", help="Judge the first N questions only."),
    samples: int = typer.Option(
        1, "--samples", help="Critiques per candidate and checkpoint (averages sampling noise)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Sampling seed, the same for every checkpoint (a paired comparison)."
    ),
    data: Path | None = typer.Option(None, "--data", help="Benchmark root (default MATSQL_DATA)."),
) -> None:
    """Keep the validator checkpoint with the best balanced accuracy on held-out candidates."""
    from matsql.backends.registry import make_backend
    from matsql.benchmarks.registry import load_benchmark
    from matsql.rollout.io import read_header, read_records, schema_style_of
    from matsql.team import load_team
    from matsql.train.checkpoints import heldout_items, list_checkpoints, pick_checkpoint, write_pick

    if agent not in ("val-sel", "val-cond"):
        raise typer.BadParameter(f"--agent {agent!r}: expected val-sel or val-cond")
    try:
        refs = list_checkpoints(run_dir)
        team = load_team(agents)
        spec = team[agent]
        bench = load_benchmark(benchmark, data)
        records = read_records(rollouts)[:limit]
        schema = bench.schema_of(schema_style_of([read_header(rollouts)]))  # the rollout's prompt layout
    except (FileNotFoundError, ValueError, KeyError) as e:
        _console.print(f"error: {e}")
        raise typer.Exit(2) from None
    items = heldout_items(records, agent, schema)
    chosen, scores = pick_checkpoint(
        refs,
        items,
        lambda path: make_backend({**spec.backend, "adapter": str(path)}, agent=agent),
        agent=agent,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        stop=spec.stop or None,
        seed=seed,
        samples=samples,
    )
    ref = next(r for r in refs if r.name == chosen)
    meta = {
        "agent": agent,
        "run_dir": run_dir.name,
        "rollouts": rollouts.name,
        "questions": len(records),
        "candidates": len(items),
        "samples": samples,
        "seed": seed,
        "temperature": spec.temperature,
    }
    write_pick(out, ref, scores, meta)
    for r in refs:
        rates = scores[r.name].rates()
        ba, fa = rates["balanced_accuracy"], rates["false_alarm_rate"]
        mark = "*" if r.name == chosen else " "
        _console.print(
            f"{mark} {r.name:>16s}  balanced accuracy {'-' if ba is None else f'{100 * ba:.1f}'}  "
            f"false alarms {'-' if fa is None else f'{100 * fa:.1f}%'}  unknown {100 * (rates['unknown_rate'] or 0):.1f}%"
        )
    _console.print(f"{agent}: kept {chosen} of {len(refs)} ({len(items)} held-out candidates) -> {out}")
