"""Drive :func:`run_batch` over a benchmark: fixed batches, resume, progress, sharding."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from matsql.backends.base import Backend
from matsql.benchmarks.splits import split_questions
from matsql.records import Candidate, Question, RolloutRecord
from matsql.rollout.config import RolloutConfig
from matsql.rollout.io import RolloutWriter, read_records
from matsql.rollout.pipeline import Services, run_batch, sampling_problems


class _RateColumn(ProgressColumn):
    """questions/s and generated tokens/s, from the backends' counters."""

    def __init__(self, tokens: Callable[[], int], start: float):
        super().__init__()
        self._tokens, self._start = tokens, start

    def render(self, task) -> Text:  # type: ignore[override]
        dt = max(time.perf_counter() - self._start, 1e-9)
        qps = (task.completed - task.fields.get("skipped", 0)) / dt
        return Text(f"{qps:.2f} q/s  {self._tokens() / dt:,.0f} tok/s", style="cyan")


def parse_parts(spec: str) -> dict[str, int]:
    """``"sft=600,label=128"`` -> ``{"sft": 600, "label": 128}`` (order kept; sizes positive)."""
    out: dict[str, int] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, eq, size = item.partition("=")
        name = name.strip()
        if not eq or not name or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(
                f"--parts {spec!r}: expected NAME=SIZE[,NAME=SIZE...] with positive sizes, got {item!r}"
            )
        if name in out:
            raise ValueError(f"--parts {spec!r}: part {name!r} is named twice")
        out[name] = int(size)
    if not out:
        raise ValueError(f"--parts {spec!r}: no parts")
    return out


def question_part(questions: Sequence[Question], parts: str, part: str, seed: int) -> list[Question]:
    """The questions of ``part`` of the partition ``parts`` (``--parts``/``--part``/``--parts-seed``),
    in their order: the permutation draw over positions in ``questions``. Every command that
    takes a part (``rollout``, ``train sft-data``) draws it here, so equal options name the same
    questions."""
    sizes = parse_parts(parts)
    if part not in sizes:
        raise ValueError(f"--part {part!r} is not one of --parts: {', '.join(sizes)}")
    try:
        chosen = split_questions(range(len(questions)), sizes, seed, "permutation")[part]
    except ValueError as e:
        raise ValueError(f"--parts {parts}: {e}") from None
    return [questions[i] for i in chosen]


def select_questions(questions: Sequence[Question], cfg: RolloutConfig) -> list[Question]:
    qs = list(questions)[cfg.offset :]
    if cfg.part is not None or cfg.parts is not None:
        if cfg.part is None or cfg.parts is None:
            raise ValueError("--parts and --part go together: the partition and the part to run on")
        qs = question_part(qs, cfg.parts, cfg.part, cfg.parts_seed)
    if cfg.sample is not None and cfg.sample < len(qs):
        keep = sorted(random.Random(f"sample:{cfg.seed}").sample(range(len(qs)), cfg.sample))
        qs = [qs[i] for i in keep]
    if cfg.limit is not None:
        qs = qs[: cfg.limit]
    if cfg.shard is not None:
        i, n = cfg.shard
        qs = [q for pos, q in enumerate(qs) if pos % n == i]
    return qs


def batches(questions: Sequence[Question], size: int) -> list[list[Question]]:
    return [list(questions[i : i + size]) for i in range(0, len(questions), size)]


def total_tokens(backends: dict[str, Backend]) -> int:
    seen, n = set(), 0
    for b in backends.values():
        if id(b) in seen:
            continue
        seen.add(id(b))
        n += b.stats.completion_tokens
    return n


def run_rollout(
    questions: Sequence[Question],
    cfg: RolloutConfig,
    svc: Services,
    out: Path,
    config_dump: dict,
    resume: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Write one record per question to ``out``; return throughput numbers and the error records
    written (reason -> count)."""
    problems = sampling_problems(cfg, svc.team)
    if problems:
        raise ValueError("rollout settings: " + "; ".join(problems))
    qs = select_questions(questions, cfg)
    reuse: dict[str, list[Candidate]] | None = None
    if cfg.planner_from:
        reuse = {r.question_id: r.candidates for r in read_records(cfg.planner_from)}
    chash = cfg.digest()
    start = time.perf_counter()
    tok0 = total_tokens(svc.backends)
    n_done_now = 0
    errors: dict[str, int] = {}  # reason -> error records written now
    with RolloutWriter(out, config_dump, chash, resume=resume) as writer:
        todo = [
            b for b in batches(qs, cfg.batch_questions) if any(q.question_id not in writer.done for q in b)
        ]
        skipped = len(qs) - sum(len(b) for b in todo)
        with Progress(
            TextColumn("[bold]rollout"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _RateColumn(lambda: total_tokens(svc.backends) - tok0, start),
            disable=not show_progress,
        ) as progress:
            task = progress.add_task("rollout", total=len(qs), completed=skipped, skipped=skipped)
            for batch in todo:
                records: list[RolloutRecord] = run_batch(
                    batch, cfg, svc, reuse_planner=reuse, config_hash=chash
                )
                for r in records:
                    if r.question_id not in writer.done:
                        writer.write(r)
                        n_done_now += 1
                        if r.error is not None:
                            errors[r.error] = errors.get(r.error, 0) + 1
                progress.update(task, advance=len(batch))
                if show_progress and not progress.console.is_terminal:  # a log (or `matsql demo`) reads it
                    done_q = int(progress.tasks[0].completed)
                    elapsed = time.perf_counter() - start
                    print(f"rollout {done_q}/{len(qs)} questions {elapsed:.0f}s", file=sys.stderr, flush=True)
    dt = time.perf_counter() - start
    toks = total_tokens(svc.backends) - tok0
    return {
        "questions": float(len(qs)),
        "written": float(n_done_now),
        "seconds": dt,
        "questions_per_s": n_done_now / dt if dt > 0 else 0.0,
        "tokens_per_s": toks / dt if dt > 0 else 0.0,
        "generated_tokens": float(toks),
        "error_records": float(sum(errors.values())),
        "errors": errors,  # type: ignore[dict-item]
    }


def records_by_id(path: str | Path) -> dict[str, RolloutRecord]:
    return {r.question_id: r for r in read_records(path)}
