"""`matsql train sft-data`: SFT datasets (TRL prompt-completion) for every agent, from a
benchmark's train split and rollouts (:mod:`matsql.labels.sft_data`). Data generation lives in
``labels``; the command keeps the name plans and results use (``train_app`` registers it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import typer
from rich.console import Console

from matsql.rollout.commands import schema_style_option

_console = Console(stderr=True)


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
    schema_style: str | None = schema_style_option(
        None, "default: the one the rollouts' header records, else mats"
    ),
    parts: str | None = typer.Option(
        None,
        "--parts",
        help="a seeded partition of the benchmark's questions, as rollout --parts (e.g. "
        "sft=2000,label=2000): with --part, the planner's gold examples and the rollout records are "
        "restricted to that part, so SFT never sees the gold SQL of the other parts",
    ),
    part: str | None = typer.Option(None, "--part", help="the part of --parts to build from"),
    parts_seed: int = typer.Option(0, "--parts-seed", help="the partition's seed (as the rollouts')"),
) -> None:
    """Build SFT datasets (TRL prompt-completion) for one agent or all."""
    from matsql.benchmarks import load_benchmark
    from matsql.benchmarks.schema import DEFAULT_STYLE, styles
    from matsql.benchmarks.splits import split_questions
    from matsql.fileio import write_text_atomic
    from matsql.labels import sft_data as sd
    from matsql.labels import teacher as tch
    from matsql.rollout.io import schema_style_of
    from matsql.rollout.runner import question_part

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
    if (parts is None) != (part is None):
        raise typer.BadParameter("--parts and --part go together: the partition and the part to build from")
    bench = load_benchmark(benchmark)
    questions = bench.runnable
    in_part: set[str] | None = None
    if parts is not None and part is not None:
        # the draw of `rollout --parts` (positions in every question of the benchmark, its default
        # --missing wrong), so that a part names the same questions in every stage
        try:
            in_part = {q.question_id for q in question_part(bench.select("wrong"), parts, part, parts_seed)}
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--parts") from None
        questions = [q for q in questions if q.question_id in in_part]
        _console.print(
            f"part {part} of {parts} (seed {parts_seed}): {len(in_part)} questions, {len(questions)} runnable"
        )
    records, headers = [], []
    if rollouts and need_rollouts:
        from matsql.rollout.io import read_rollouts

        records, headers = read_rollouts(rollouts)
        if in_part is not None:
            kept = [r for r in records if r.question_id in in_part]
            if len(kept) < len(records):
                _console.print(
                    f"[yellow]{len(records) - len(kept)} of {len(records)} rollout record(s) are not in "
                    f"part {part}: left out[/yellow]"
                )
            records = kept
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
                built = sd.planner_examples(questions, schema)
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
    if in_part is not None:  # recorded when given (earlier files stay as they were)
        meta["parts"] = {"parts": parts, "part": part, "parts_seed": parts_seed, "questions": len(in_part)}
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
    write_text_atomic(out / "sft_data.json", json.dumps(meta, indent=2) + "\n")
