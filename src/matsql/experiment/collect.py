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
from datetime import datetime
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
LEASE_GAP_S = 1800.0  # a lent GPU goes back 30 s after its last call; sessions are hours apart


def leases(rows: list[dict[str, Any]], gap_s: float = LEASE_GAP_S) -> list[dict[str, Any]]:
    """Group finished stages into the sittings they ran in: a stage that started more than
    ``gap_s`` after every earlier stage had finished opens a new group. A plan that resumes
    across GPU leases gets one group per lease (stages run off the device between leases form
    groups of their own). Sets each row's ``lease`` (1, 2, ...) and returns, per group, its
    stages, first start, last finish, span and summed stage seconds. Pure but for the rows."""
    timed: list[tuple[datetime, datetime, dict[str, Any]]] = []
    for r in rows:
        start, finish = _when(r.get("started")), _when(r.get("finished"))
        if start and finish:
            timed.append((start, finish, r))
    timed.sort(key=lambda t: t[0])
    out: list[dict[str, Any]] = []
    end = datetime.min
    for start, finish, r in timed:
        if not out or (start - end).total_seconds() > gap_s:
            out.append(
                {"lease": len(out) + 1, "first_started": r["started"], "last_finished": r["finished"],
                 "stages": [], "stage_seconds": 0.0}
            )  # fmt: skip
            end = finish
        group = out[-1]
        r["lease"] = group["lease"]
        group["stages"].append(r["stage"])
        group["stage_seconds"] += float(r.get("seconds") or 0.0)
        if finish > end:
            end, group["last_finished"] = finish, r["finished"]
    for g in out:
        span = datetime.fromisoformat(g["last_finished"]) - datetime.fromisoformat(g["first_started"])
        g["span_s"] = round(span.total_seconds(), 1)
        g["stage_seconds"] = round(g["stage_seconds"], 1)
    return out


def _when(stamp: Any) -> datetime | None:
    """A manifest's ISO timestamp, or None (absent or not a timestamp)."""
    try:
        return datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return None


@dataclass
class Collected:
    """What `collect_run` wrote, for the summary and the caller's message."""

    stage_rows: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    yields: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    primary: dict[str, Any] | None = None  # the plan's pre-registered comparison and its result
    leases: list[dict[str, Any]] = field(default_factory=list)  # stage groups by sitting (`leases`)
    untrained: list[str] = field(default_factory=list)  # training stages that found no rows
    picks: dict[str, dict[str, Any]] = field(default_factory=dict)  # checkpoint picks (`pick_summary`)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # training budgets (`budget_row`)


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


PICK_RATES = ("balanced_accuracy", "catch_rate", "false_alarm_rate", "unknown_rate")


def pick_summary(pick: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint pick's choice and every candidate's rates, from its ``pick.json`` (pure):
    issue 16 reports catch rate and false alarms for every arm's validators, not only the kept one."""

    def step(name: str) -> tuple[int, int]:  # checkpoint-N by N, then the final adapter
        tail = name.rsplit("-", 1)[-1]
        return (1, 0) if not tail.isdigit() else (0, int(tail))

    raw = pick.get("scores", {})
    scores = {
        name: {k: (raw[name].get("rates") or {}).get(k) for k in PICK_RATES} for name in sorted(raw, key=step)
    }
    keys = {"agent", "run_dir", "chosen", "chosen_step", "candidates", "questions", "samples", "seed"}
    return {k: pick.get(k) for k in sorted(keys)} | {"scores": scores}


def budget_row(run_info: dict[str, Any], training: dict[str, Any], recipe_lr: Any = None) -> dict[str, Any]:
    """What a training stage trained on and for how long (pure): train rows (preference pairs for
    ORPO), memory and prompts cut from its ``run.json``; optimizer steps and epochs from its
    ``training_summary``. Issue 16 asks for pairs and ORPO steps per arm (equal budgets)."""
    counts = run_info.get("data_counts") or []
    train = run_info.get("train_tokens") or {}
    return {
        "method": run_info.get("method"),
        "train_rows": sum(int(c.get("train") or 0) for c in counts) if counts else train.get("rows"),
        "steps": training.get("steps"),
        "epochs": training.get("epochs"),
        "effective_batch": run_info.get("effective_batch_size"),
        "learning_rate": recipe_lr,
        "peak_gpu_memory_gib": run_info.get("peak_gpu_memory_gib"),
        "prompts_cut": train.get("prompts_cut"),
    }


def _recipe_lr(folder: Path) -> Any:
    """The learning rate of the recipe a run resolved (its ``recipe.yaml``), or None."""
    import yaml

    f = folder / "recipe.yaml"
    if not f.is_file():
        return None
    try:
        return ((yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("trainer") or {}).get(
            "learning_rate"
        )
    except yaml.YAMLError:
        return None


def primary_result(plan: Plan) -> dict[str, Any] | None:
    """The plan's pre-registered primary comparison (``primary:``) with what its stage measured:
    the difference and intervals in pp, and whether the claim holds at the registered margin (the
    CI's lower bound above it), whatever margin the stage's own command used. None when the
    plan registers none; without the stage's ``compare.json`` the result is absent."""
    from matsql.evaluate.statistics import ComparisonResult, verdict_at

    if plan.primary is None:
        return None
    p = plan.primary
    out: dict[str, Any] = {
        "stage": p.stage,
        "metric": p.metric,
        "margin_pp": p.margin_pp,
        "claim": p.claim,
    }
    m = read_manifest(plan.run_dir, p.stage)
    found = Path(plan.stages[p.stage].out) / "compare.json"
    if not (m and m.get("status") == "done" and found.is_file()):
        return out | {"result": None}
    r = ComparisonResult.model_validate(json.loads(found.read_text()))
    holds, verdict = verdict_at(r, p.margin_pp)

    def pp(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 4)

    out["result"] = {
        "a": r.name_a,
        "b": r.name_b,
        "n": r.n,
        "ex_a": pp(r.ex_a),
        "ex_b": pp(r.ex_b),
        "diff_pp": pp(r.diff),
        "ci_pp": [pp(r.ci_low), pp(r.ci_high)],
        "cluster_ci_pp": None if r.cluster_ci_low is None else [pp(r.cluster_ci_low), pp(r.cluster_ci_high)],
        "mde_pp": pp(r.mde),
        "p_value": r.mcnemar_p,
        "claim_holds": holds,
        "verdict": verdict,
    }
    return out


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
                "waited_s": m.get("waited_s"),  # for GPU slots, apart from seconds (runs since session 12)
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
        run_json = out / "run.json"
        run_info = json.loads(run_json.read_text()) if run_json.is_file() else None
        if run_info and run_info.get("status") == "no_data":
            got.untrained.append(name)  # done as a stage, but its adapter is the one it started from
        if (out / "pick.json").is_file():  # a checkpoint pick: its scores, not its adapter copy
            text = portable_text((out / "pick.json").read_text(), run_dir)
            got.picks[name] = pick_summary(json.loads(text))
            (dest / rel).mkdir(parents=True, exist_ok=True)
            (dest / rel / "pick.json").write_text(text, encoding="utf-8")
            got.files.append(str(rel / "pick.json"))
        elif run_info and name in got.training:  # a training run
            got.budgets[name] = budget_row(run_info, got.training[name], _recipe_lr(out))
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
    got.primary = primary_result(plan)
    got.leases = leases(got.stage_rows)
    summary = {
        "plan": plan.name,
        "primary": got.primary,
        "leases": got.leases,
        "stages": got.stage_rows,
        "not_done": got.missing,
        "untrained": got.untrained,
        "training": got.training,
        "label_yield": got.yields,
        "budgets": got.budgets,
        "picks": got.picks,
    }
    (dest / "collect.json").write_text(json.dumps(summary, indent=2) + "\n")
    (dest / "stages.md").write_text(stages_markdown(got))
    return got


def _lr(v: Any) -> str:
    """A learning rate as the recipe would write it (2e-04, not 0.000)."""
    return "-" if v is None else f"{float(v):g}"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def primary_markdown(primary: dict[str, Any] | None) -> list[str]:
    """The pre-registered comparison first, so a reader sees which result the claim rests on."""
    if primary is None:
        return []
    lines = [
        "# Primary comparison (pre-registered in the plan)",
        "",
        f"- stage: `{primary['stage']}`; metric: {primary['metric']}; margin: {primary['margin_pp']:g} pp",
    ]
    if primary.get("claim"):
        lines.append(f"- claim: {primary['claim']}")
    r = primary.get("result")
    if r is None:
        lines.append("- result: not run yet")
    else:
        ci = ", ".join(f"{x:+.2f}" for x in r["ci_pp"])
        lines += [
            f"- result: {r['a']} - {r['b']} = {r['diff_pp']:+.2f} pp, 95% CI [{ci}], {r['n']} questions"
            + ("" if r["mde_pp"] is None else f", MDE {r['mde_pp']:.2f} pp"),
            f"- at the registered margin: **{'the claim holds' if r['claim_holds'] else 'the claim does not hold'}**"
            f" ({r['verdict']})",
        ]
    return [*lines, ""]


def stages_markdown(got: Collected) -> str:
    """Stage times and training outcomes as Markdown tables (the run's manifests and metrics.json)."""
    lines = primary_markdown(got.primary)
    if got.untrained:
        lines += [
            f"**Trained on no rows** (done, but the adapter is the one it started from; `run.json` "
            f"status `no_data`): {', '.join(got.untrained)}",
            "",
        ]
    primary = got.primary["stage"] if got.primary else None
    lines += [
        "# Stages",
        "",
        "| stage | lease | seconds | waited for GPU (s) | started | finished |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']}{' (**primary**, pre-registered)' if r['stage'] == primary else ''} | "
        f"{_fmt(r.get('lease'))} | {_fmt(r['seconds'])} | {_fmt(r.get('waited_s'))} | {r['started']} | {r['finished']} |"
        for r in got.stage_rows
    ]
    if got.stage_rows:
        starts = [r["started"] for r in got.stage_rows if r["started"]]
        ends = [r["finished"] for r in got.stage_rows if r["finished"]]
        if starts and ends:
            lines += ["", f"First stage started {min(starts)}, last finished {max(ends)}."]
    if len(got.leases) > 1:
        lines += [
            "",
            f"# Stage times per lease (stages more than {LEASE_GAP_S / 60:.0f} minutes apart start a new "
            "group; stages run off the device between leases form groups of their own)",
            "",
            "| lease | stages | first started | last finished | span (s) | stage seconds |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {g['lease']} | {len(g['stages'])} | {g['first_started']} | {g['last_finished']} | "
            f"{_fmt(g['span_s'])} | {_fmt(g['stage_seconds'])} |"
            for g in got.leases
        ]
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
    if got.budgets:
        lines += [
            "",
            "# Training budgets (train rows: preference pairs for ORPO; steps: optimizer steps)",
            "",
            "| stage | train rows | steps | epochs | batch | learning rate | peak GiB | prompts cut |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {_fmt(b['train_rows'])} | {_fmt(b['steps'])} | {_fmt(b['epochs'])} | "
            f"{_fmt(b['effective_batch'])} | {_lr(b['learning_rate'])} | {_fmt(b['peak_gpu_memory_gib'])} | "
            f"{_fmt(b['prompts_cut'])} |"
            for n, b in got.budgets.items()
        ]
    if got.picks:
        lines += [
            "",
            "# Checkpoint picks (held-out candidates; balanced accuracy, catch rate / false alarms; "
            "**kept**)",
            "",
            "| stage | agent | candidates | checkpoint | balanced accuracy | catch | false alarms | unknown |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n, p in got.picks.items():
            for ck, r in p["scores"].items():
                mark = f"**{ck}**" if ck == p["chosen"] else ck
                lines.append(
                    f"| {n} | {p['agent']} | {_fmt(p['candidates'])} | {mark} | {_fmt(r['balanced_accuracy'])} | "
                    f"{_fmt(r['catch_rate'])} | {_fmt(r['false_alarm_rate'])} | {_fmt(r['unknown_rate'])} |"
                )
    if got.missing:
        lines += ["", f"Not done (not collected): {', '.join(got.missing)}"]
    return "\n".join(lines) + "\n"
