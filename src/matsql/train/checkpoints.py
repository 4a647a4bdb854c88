"""Pick a validator's ORPO checkpoint by how well it judges, not by its pair reward accuracy.

Why: in the full study, ORPO raised every arm's pair reward accuracy while its validators
flagged more and judged worse (false alarms 30% -> 39-83%, balanced accuracy down in every
arm). The checkpoint worth keeping is the one whose verdicts best separate right from wrong
candidates on questions it was not trained on. So each saved checkpoint (and the final
adapter) critiques the candidates of held-out label rollouts, one or more samples per
candidate at the agent's own temperature and one seed shared by all checkpoints (a paired
comparison), and the one with the highest balanced accuracy, (catch rate + pass rate) / 2, is
copied to the output folder. Ties go to fewer unknown verdicts, then to the earlier step.

The scoring is pure (``score``, ``choose``); generation goes through any backend.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matsql.agents import validator
from matsql.backends.base import Backend, ChatPrompt
from matsql.evaluate.diagnostics import ValidatorDiagnostics, tally
from matsql.fileio import atomic_dir
from matsql.records import RolloutRecord
from matsql.train.modeling import RUN_FILE

PICK_FILE = "pick.json"


@dataclass(frozen=True)
class CheckpointRef:
    name: str  # checkpoint-N, or "final"
    path: Path
    step: int  # optimizer step; the final adapter sorts last


@dataclass(frozen=True)
class Item:
    """One held-out candidate to judge."""

    question_id: str
    candidate: int
    prompt: ChatPrompt
    correct: bool


def saved_steps(run_dir: str | Path) -> list[int]:
    """The checkpoint steps a run's own ``recipe.yaml`` says it saved: every ``save_steps``
    up to ``max_steps`` when it saved by steps, kept all (``save_total_limit: null``) and had a
    step budget, and trained (``run.json``: ``complete``; a run with no training rows saves its
    starting model alone); empty when the recipe cannot say (no recipe, epochs, a total limit)."""
    import yaml

    f, info = Path(run_dir) / "recipe.yaml", Path(run_dir) / RUN_FILE
    if not f.is_file() or not info.is_file():
        return []
    if json.loads(info.read_text(encoding="utf-8")).get("status") != "complete":
        return []
    tr = (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("trainer") or {}
    every, last = tr.get("save_steps"), tr.get("max_steps")
    if tr.get("save_strategy") != "steps" or tr.get("save_total_limit") is not None:
        return []
    if not isinstance(every, int) or not isinstance(last, int) or every <= 0 or last <= 0:
        return []
    return list(range(every, last + 1, every))


def list_checkpoints(run_dir: str | Path, *, complete: bool = True) -> list[CheckpointRef]:
    """TRL's ``checkpoints/*/checkpoint-N`` adapters of a run, then the final adapter.

    With ``complete``, every checkpoint the run's recipe saved must be there. Why: checkpoints
    stay on the machine that trained (``scripts/device/ship.py`` leaves them behind), and a
    pick over what is left, the final adapter alone, would look like a choice and be none."""
    run = Path(run_dir)
    refs = []
    for p in run.glob("checkpoints/*/checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "adapter_config.json").is_file():
            refs.append(CheckpointRef(p.name, p, int(m.group(1))))
    refs.sort(key=lambda r: r.step)
    saved = saved_steps(run) if complete else []
    missing = sorted(set(saved) - {r.step for r in refs})
    if missing:
        raise FileNotFoundError(
            f"{run}: its recipe.yaml saved checkpoints at steps {saved}, but "
            f"{', '.join(f'checkpoint-{s}' for s in missing)} are not under {run / 'checkpoints'} "
            "(checkpoints stay where the run trained: pick there, or train the run again here)"
        )
    if (run / "adapter_config.json").is_file():
        last = max((r.step for r in refs), default=0)
        refs.append(CheckpointRef("final", run, last + 1))
    if not refs:
        raise FileNotFoundError(
            f"{run}: no adapter checkpoints (checkpoints/*/checkpoint-N/adapter_config.json) and no final "
            "adapter; train with --set trainer.save_strategy=steps --set trainer.save_steps=N "
            "--set trainer.save_total_limit=null to keep checkpoints"
        )
    return refs


def heldout_items(
    records: Sequence[RolloutRecord], agent: str, schema_of: Callable[[str], str]
) -> list[Item]:
    """The validator prompt of every candidate that has SQL, with its correctness."""
    items = []
    for rec in records:
        q = rec.question
        for c in rec.candidates:
            if not c.planner.sql:
                continue
            prompt = validator.build(agent, q, schema_of(q.db_id), c.planner.sql, c.exec)
            items.append(Item(q.question_id, c.index, prompt, c.correct))
    return items


def score(agent: str, verdicts: Sequence[Sequence[str]], items: Sequence[Item]) -> ValidatorDiagnostics:
    """Counts of catches, misses, passes, false alarms and unknowns over every sample."""
    d = ValidatorDiagnostics(agent)
    for samples, item in zip(verdicts, items, strict=True):
        for v in samples:
            tally(d, v, item.correct)
    return d


def choose(scores: dict[str, ValidatorDiagnostics], steps: dict[str, int]) -> str:
    """The checkpoint with the highest balanced accuracy; fewer unknowns, then earlier, on ties."""

    def key(name: str) -> tuple[float, float, int]:
        r = scores[name].rates()
        ba = r["balanced_accuracy"]
        return (-(ba if ba is not None else -1.0), r["unknown_rate"] or 0.0, steps[name])

    ranked = sorted(scores, key=key)
    if scores[ranked[0]].rates()["balanced_accuracy"] is None:
        raise ValueError(
            "no checkpoint has a balanced accuracy: the held-out candidates need both right and wrong "
            "ones, and verdicts other than unknown"
        )
    return ranked[0]


def pick_checkpoint(
    refs: Sequence[CheckpointRef],
    items: Sequence[Item],
    make_backend: Callable[[Path], Backend],
    *,
    agent: str,
    temperature: float,
    max_tokens: int,
    stop: list[str] | None,
    seed: int,
    samples: int,
) -> tuple[str, dict[str, ValidatorDiagnostics]]:
    """Critique ``items`` with every checkpoint; returns the chosen name and every score.

    Every backend is made before any generates, so an engine that sizes itself for its
    adapters at its first call (vLLM) knows all of them."""
    backends = {r.name: make_backend(r.path) for r in refs}
    prompts = [it.prompt for it in items]
    scores = {}
    for r in refs:
        texts = backends[r.name].generate(
            prompts, n=samples, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
        )
        scores[r.name] = score(agent, [[validator.parse(t) for t in ts] for ts in texts], items)
    return choose(scores, {r.name: r.step for r in refs}), scores


def write_pick(
    out: Path,
    chosen: CheckpointRef,
    scores: dict[str, ValidatorDiagnostics],
    meta: dict[str, Any],
    run_info: dict[str, Any] | None = None,
) -> Path:
    """Copy the chosen adapter to ``out`` (a plain adapter folder later stages load) with
    ``pick.json`` naming it and every checkpoint's scores; written to a temp folder that then
    replaces ``out`` (:func:`matsql.fileio.atomic_dir`). A TRL checkpoint has no ``run.json``,
    which a training stage that continues from ``out`` (``init_from``: the v2 plan's iter2 ORPO)
    needs: ``run_info``, the run's own, goes there with the checkpoint it now describes."""
    out = Path(out)
    body = meta | {
        "chosen": chosen.name,
        "chosen_step": chosen.step,
        "scores": {k: v.as_dict() for k, v in scores.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        shutil.copytree(
            chosen.path,
            tmp,
            ignore=shutil.ignore_patterns("checkpoints", "optimizer.pt", "rng_state*"),
            dirs_exist_ok=True,
        )
        (tmp / PICK_FILE).write_text(
            json.dumps(body, indent=1, sort_keys=True, default=str), encoding="utf-8"
        )
        if run_info is not None and not (tmp / RUN_FILE).exists():
            picked = run_info | {"picked_checkpoint": chosen.name, "picked_step": chosen.step}
            (tmp / RUN_FILE).write_text(json.dumps(picked, indent=1, default=str), encoding="utf-8")
    return out
