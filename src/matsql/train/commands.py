"""`matsql train ...`: SFT / ORPO runs from recipes, checkpoint picking; `sft-data` (made in
:mod:`matsql.labels.sft_data_cmd`) keeps its name here.

Multi-GPU: the same command under accelerate, e.g.
``accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m matsql.train sft RECIPE``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import typer
import yaml
from rich.console import Console

from matsql.labels.sft_data_cmd import sft_data

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


# SFT data is made in matsql.labels (data generation); `train sft-data` is its command name
train_app.command("sft-data")(sft_data)


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
    final_only: bool = typer.Option(
        False,
        "--final-only",
        help="Score the final adapter alone: a reference on the same candidates and seed, such as "
        "the SFT validator an ORPO run started from.",
    ),
) -> None:
    """Keep the validator checkpoint with the best balanced accuracy on held-out candidates."""
    from matsql.backends.registry import make_backend
    from matsql.benchmarks.registry import load_benchmark
    from matsql.rollout.io import read_header, read_records, schema_style_of
    from matsql.team import load_team
    from matsql.train.checkpoints import heldout_items, list_checkpoints, pick_checkpoint, write_pick
    from matsql.train.modeling import RUN_FILE

    if agent not in ("val-sel", "val-cond"):
        raise typer.BadParameter(f"--agent {agent!r}: expected val-sel or val-cond")
    try:
        refs = list_checkpoints(run_dir, complete=not final_only)
        if final_only:
            refs = [r for r in refs if r.name == "final"]
            if not refs:
                raise FileNotFoundError(f"{run_dir}: --final-only, but the run has no final adapter")
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
    run_json = run_dir / RUN_FILE
    run_info = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else None
    write_pick(out, ref, scores, meta, run_info)
    for r in refs:
        rates = scores[r.name].rates()
        ba, fa = rates["balanced_accuracy"], rates["false_alarm_rate"]
        mark = "*" if r.name == chosen else " "
        _console.print(
            f"{mark} {r.name:>16s}  balanced accuracy {'-' if ba is None else f'{100 * ba:.1f}'}  "
            f"false alarms {'-' if fa is None else f'{100 * fa:.1f}%'}  unknown {100 * (rates['unknown_rate'] or 0):.1f}%"
        )
    _console.print(f"{agent}: kept {chosen} of {len(refs)} ({len(items)} held-out candidates) -> {out}")
