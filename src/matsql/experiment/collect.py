"""Gather a finished run into a results folder small enough to commit.

A run folder holds gigabytes (SFT datasets, checkpoints, tokenizer copies); what a reader needs
to check the study is far smaller: every rollout and pick file (gzipped, per-question outcomes),
the report and compare outputs, label yields, training metrics and stage times. Adapters go to a
separate folder on request, because 60 MB of LoRA weights do not belong in every checkout.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matsql.evaluate.portable import portable_text
from matsql.experiment.manifest import read_manifest
from matsql.experiment.plan import Plan

COPIED_SUFFIXES = {".md", ".json", ".png", ".pdf", ".svg", ".csv", ".tex"}  # report / compare / yield outputs
TEXT_SUFFIXES = {".md", ".json", ".svg", ".csv", ".tex"}  # copied with portable paths
ADAPTER_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "recipe.yaml",
    "metrics.json",
    "run.json",
)
TRAIN_KEYS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_mean_token_accuracy")


@dataclass
class Collected:
    """What `collect_run` wrote, for the summary and the caller's message."""

    stage_rows: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    yields: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _gzip_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as f, dest.open("wb") as raw:  # mtime=0: same bytes for the same run
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as g:
            shutil.copyfileobj(f, g)


def training_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Held-out numbers before and after training, runtime and steps, from a run's metrics.json."""
    before, after, train = metrics.get("eval_before", {}), metrics.get("eval", {}), metrics.get("train", {})
    steps = max((h.get("step", 0) for h in metrics.get("log_history", [])), default=None)
    row: dict[str, Any] = {"train_runtime_s": train.get("train_runtime"), "epochs": train.get("epoch")}
    if steps:
        row["steps"] = steps
    for k in TRAIN_KEYS:
        if k in before or k in after:
            row[k] = {"before": before.get(k), "after": after.get(k)}
    return row


def collect_run(
    plan: Plan,
    dest: Path,
    adapters: list[str] | None = None,
    adapters_dest: Path | None = None,
    skip: list[str] | None = None,
) -> Collected:
    """Copy the committable part of ``plan``'s run folder into ``dest`` (see module doc); stages in
    ``skip`` count in the times table but their files stay behind (e.g. rebuildable SFT data)."""
    run_dir = plan.run_dir
    got = Collected()
    dest.mkdir(parents=True, exist_ok=True)
    for name, stage in plan.stages.items():
        m = read_manifest(run_dir, name)
        if not m or m.get("status") != "done":
            got.missing.append(name)
            continue
        got.stage_rows.append(
            {
                "stage": name,
                "seconds": m.get("seconds"),
                "started": m.get("started"),
                "finished": m.get("finished"),
            }
        )
        if name in (skip or []):
            continue
        out = Path(stage.out)
        rel = out.relative_to(run_dir) if out.is_relative_to(run_dir) else Path(out.name)
        if out.is_file() and out.suffix == ".jsonl":
            _gzip_copy(out, dest / f"{rel}.gz")
            got.files.append(f"{rel}.gz")
            continue
        if not out.is_dir():
            continue
        if (out / "metrics.json").is_file():
            got.training[name] = training_summary(json.loads((out / "metrics.json").read_text()))
        if (out / "yield.json").is_file():
            got.yields[name] = json.loads(portable_text((out / "yield.json").read_text(), run_dir))
        trained = (out / "adapter_config.json").exists()  # its metrics are summarised above
        for f in sorted(out.iterdir()):
            if f.is_file() and f.suffix == ".jsonl":
                _gzip_copy(f, dest / rel / f"{f.name}.gz")
                got.files.append(f"{rel / f.name}.gz")
            elif f.is_file() and f.suffix in COPIED_SUFFIXES and not trained:
                (dest / rel).mkdir(parents=True, exist_ok=True)
                if f.suffix in TEXT_SUFFIXES:  # no machine's absolute paths in committed results
                    (dest / rel / f.name).write_text(portable_text(f.read_text(), run_dir), encoding="utf-8")
                else:
                    shutil.copy2(f, dest / rel / f.name)
                got.files.append(str(rel / f.name))
    for name in adapters or []:
        if name not in plan.stages:
            raise KeyError(f"--adapters: no stage {name!r} in plan {plan.name}")
        src = Path(plan.stages[name].out)
        if not (src / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"--adapters: {src} holds no adapter_model.safetensors (stage {name})")
        target = (adapters_dest or dest / "adapters") / name
        target.mkdir(parents=True, exist_ok=True)
        for fname in ADAPTER_FILES:
            if (src / fname).is_file():
                shutil.copy2(src / fname, target / fname)
    summary = {
        "plan": plan.name,
        "stages": got.stage_rows,
        "not_done": got.missing,
        "training": got.training,
        "label_yield": got.yields,
    }
    (dest / "collect.json").write_text(json.dumps(summary, indent=2) + "\n")
    (dest / "stages.md").write_text(stages_markdown(got))
    return got


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def stages_markdown(got: Collected) -> str:
    """Stage times and training outcomes as Markdown tables (the run's manifests and metrics.json)."""
    lines = ["# Stages", "", "| stage | seconds | started | finished |", "|---|---|---|---|"]
    lines += [
        f"| {r['stage']} | {_fmt(r['seconds'])} | {r['started']} | {r['finished']} |" for r in got.stage_rows
    ]
    if got.stage_rows:
        starts = [r["started"] for r in got.stage_rows if r["started"]]
        ends = [r["finished"] for r in got.stage_rows if r["finished"]]
        if starts and ends:
            lines += ["", f"First stage started {min(starts)}, last finished {max(ends)}."]
    if got.training:
        lines += ["", "# Training (held-out split, before -> after)", ""]
        lines += [
            "| stage | steps | seconds | eval loss | reward accuracy | margin | token accuracy |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, t in got.training.items():
            cells = [
                f"{_fmt(t[k]['before'])} -> {_fmt(t[k]['after'])}" if k in t else "-" for k in TRAIN_KEYS
            ]
            lines.append(
                f"| {name} | {_fmt(t.get('steps'))} | {_fmt(t.get('train_runtime_s'))} | "
                + " | ".join(cells)
                + " |"
            )
    if got.missing:
        lines += ["", f"Not done (not collected): {', '.join(got.missing)}"]
    return "\n".join(lines) + "\n"
