"""``matsql labels``: rollout files -> preference datasets (``build``) and pair yields (``yield``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from matsql.benchmarks.splits import split_questions
from matsql.fileio import sha256_file
from matsql.labels.common import DEFAULT_MAX_PAIRS_PER_PROMPT, PromptFn
from matsql.labels.dataset import write_json, write_split
from matsql.labels.fixer import sft_balance
from matsql.labels.prompts import check_prompts, make_prompt_fn
from matsql.labels.registry import MODES_BY_AGENT, LabelRun, modes_for, run_labels
from matsql.labels.yield_stats import YieldStats, compute_yield, yield_table
from matsql.records import RolloutRecord
from matsql.rollout.io import benchmark_of, read_rollouts, schema_style_of

labels_app = typer.Typer(
    help="Preference labels from rollout records (one module per label mode).", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

AGENT_HELP = ", ".join(MODES_BY_AGENT)


def _fail(msg: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {msg}")
    return typer.Exit(code=1)


def schema_lookup(benchmark: str, data: Path | None, style: str) -> Callable[[str], str]:
    """Schema text per db_id from the benchmark in the rollout's style (the same text its prompts
    used)."""
    from matsql.benchmarks import load_benchmark

    return load_benchmark(benchmark, root=data).schema_of(style)


def label_modes(
    records: Sequence[RolloutRecord], agent: str, mode: str, prompt_fn: PromptFn, **opts: Any
) -> Iterator[tuple[LabelRun, YieldStats]]:
    """Each of the agent's modes (``mode`` is one or ``all``) labelled, with its yield (the E1 SFT
    mix's balance included), so that ``build`` and ``yield`` report the same numbers."""
    for m in modes_for(agent, mode):
        run = run_labels(agent, m, records, prompt_fn, **opts)
        yield run, compute_yield(run, sft_balance(records, run.sft) if run.sft is not None else None)


def build_labels(
    records: Sequence[RolloutRecord],
    agent: str,
    mode: str,
    prompt_fn: PromptFn,
    out: Path,
    *,
    max_pairs_per_prompt: int | None = DEFAULT_MAX_PAIRS_PER_PROMPT,
    max_pairs_per_question: int | None = None,
    test_frac: float = 0.1,
    seed: int = 0,
    with_verdicts: bool = False,
    sft_max_per_question: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> list[YieldStats]:
    """Label, split by question and write each mode (one mode -> ``out``; several ->
    ``out/<mode>``). Returns the yields (also written as ``yield.json``)."""
    modes = modes_for(agent, mode)
    # the same test questions for every agent and mode labelled from one rollout
    test_ids = set(
        split_questions([r.question_id for r in records], {"test": test_frac}, seed, "shuffle")["test"]
    )
    stats: list[YieldStats] = []
    runs = label_modes(
        records,
        agent,
        mode,
        prompt_fn,
        max_pairs_per_prompt=max_pairs_per_prompt,
        max_pairs_per_question=max_pairs_per_question,
        seed=seed,
        with_verdicts=with_verdicts,
        sft_max_per_question=sft_max_per_question,
    )
    for run, y in runs:
        stats.append(y)
        d = out if len(modes) == 1 else out / run.mode
        splits = {"pairs": write_split(d, "pairs", run.pairs, test_ids)}
        if run.sft is not None:
            splits["sft"] = write_split(d, "sft", run.sft, test_ids)
        write_json(
            d / "yield.json",
            {
                "yield": y.to_dict(),
                "splits": splits,
                "test_questions": sorted(test_ids),
                "options": {**run.options, "test_frac": test_frac},
                "provenance": provenance or {},
            },
        )
    if len(modes) > 1:
        write_json(
            out / "yield.json", {"modes": [y.to_dict() for y in stats], "provenance": provenance or {}}
        )
    return stats


@labels_app.command("build")
def build(
    agent: str = typer.Option(..., "--agent", help=AGENT_HELP),
    mode: str = typer.Option(
        "all", "--mode", help="independent, collab, collab_v2, joint, e1, or all (the agent's modes)"
    ),
    rollouts: list[Path] = typer.Option(..., "--rollouts", help="rollout JSONL file (repeat for several)"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    benchmark: str | None = typer.Option(
        None, "--benchmark", help="for schema text; default: the rollout header's"
    ),
    data: Path | None = typer.Option(None, "--data", help="benchmark root (default MATSQL_DATA)"),
    max_pairs_per_prompt: int = typer.Option(
        DEFAULT_MAX_PAIRS_PER_PROMPT, "--max-pairs-per-prompt", min=1, help="cap of pairs sharing one prompt"
    ),
    max_pairs_per_question: int | None = typer.Option(
        None, "--max-pairs-per-question", min=1, help="cap of pairs per question (default: none)"
    ),
    test_frac: float = typer.Option(
        0.1, "--test-frac", min=0.0, max=0.99, help="share of questions written to the test split"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed: pair sampling and the train/test split"),
    with_verdicts: bool = typer.Option(
        False, "--with-verdicts", help="selector options show validator verdicts"
    ),
    sft_max_per_question: int | None = typer.Option(
        None, "--sft-max-per-question", min=1, help="fixer SFT rows per question (default: all)"
    ),
    check: bool = typer.Option(
        True, "--check-prompts/--no-check-prompts", help="rebuilt prompts must match the rollout's digests"
    ),
) -> None:
    """Write preference pairs (DatasetDict + pairs.jsonl + yield.json) for one agent."""
    try:
        modes_for(agent, mode)
        records, headers = read_rollouts(rollouts)
        name = benchmark or benchmark_of(headers, records)
        if name is None:
            raise ValueError(
                "no benchmark in the rollout header or questions; pass --benchmark (schema text)"
            )
        if data is None:
            roots = {h.config.get("data") for h in headers if h.config.get("data")}
            data = Path(roots.pop()) if len(roots) == 1 else None
        prompt_fn = make_prompt_fn(schema_lookup(name, data, schema_style_of(headers)))
        if check:
            bad = check_prompts(records, prompt_fn)
            if bad:
                raise ValueError(
                    "prompts rebuilt here differ from those the rollout used (wrong --benchmark/--data, or a "
                    "changed template); pairs would not share the generating prompt:\n  " + "\n  ".join(bad)
                )
        stats = build_labels(
            records,
            agent,
            mode,
            prompt_fn,
            out,
            max_pairs_per_prompt=max_pairs_per_prompt,
            max_pairs_per_question=max_pairs_per_question,
            test_frac=test_frac,
            seed=seed,
            with_verdicts=with_verdicts,
            sft_max_per_question=sft_max_per_question,
            provenance={
                "rollouts": [{"path": str(p), "sha256": sha256_file(p)} for p in rollouts],
                "benchmark": name,
            },
        )
    except (ValueError, FileExistsError) as e:
        raise _fail(str(e)) from e
    console.print(yield_table(stats, title=f"pair yield ({len(records)} questions) -> {out}"))


@labels_app.command("yield")
def yield_cmd(
    rollouts: list[Path] = typer.Argument(..., help="rollout JSONL files"),
    agent: str = typer.Option(..., "--agent", help=AGENT_HELP),
    max_pairs_per_prompt: int = typer.Option(
        DEFAULT_MAX_PAIRS_PER_PROMPT, "--max-pairs-per-prompt", min=1, help="cap of pairs sharing one prompt"
    ),
    max_pairs_per_question: int | None = typer.Option(
        None, "--max-pairs-per-question", min=1, help="cap of pairs per question (default: none)"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed of pair sampling"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the yields as JSON"),
) -> None:
    """Print the pair yield of every mode of an agent, side by side (no schema needed: prompts
    of one question share the schema, so grouping is the same without it)."""
    try:
        modes_for(agent, "all")
        records, _ = read_rollouts(rollouts)
    except ValueError as e:
        raise _fail(str(e)) from e
    runs = label_modes(
        records,
        agent,
        "all",
        make_prompt_fn(lambda db_id: ""),
        max_pairs_per_prompt=max_pairs_per_prompt,
        max_pairs_per_question=max_pairs_per_question,
        seed=seed,
    )
    stats = [y for _, y in runs]
    console.print(yield_table(stats, title=f"pair yield, {agent} ({len(records)} questions)"))
    if json_out is not None:
        write_json(json_out, [s.to_dict() for s in stats])
