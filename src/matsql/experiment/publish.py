"""Publish a run: model cards for each trained agent and a README with the results table,
pushed with huggingface_hub (or written to a folder with ``--dry-run``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from matsql import __version__

ARTIFACT_MARKERS = ("adapter_config.json", "config.json")


def find_artifacts(run_dir: Path) -> list[dict[str, Any]]:
    """Trained agents in a run: stage outputs holding an adapter or a model."""
    found = []
    for m in sorted((run_dir / "manifests").glob("*.json")):
        man = json.loads(m.read_text())
        out = Path(man.get("out", ""))
        if man.get("status") != "done" or not out.is_dir():
            continue
        if any((out / marker).exists() for marker in ARTIFACT_MARKERS):
            run_info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
            found.append({"stage": man["stage"], "path": out, "manifest": man, "run": run_info})
    return found


def model_card(art: dict[str, Any], repo: str) -> str:
    run = art["run"]
    base = run.get("base_model")  # written by `matsql train` in run.json
    meta = {
        "library_name": "peft" if (art["path"] / "adapter_config.json").exists() else "transformers",
        "base_model": base or "unknown",
        "tags": ["text-to-sql", "matsql", art["stage"]],
        "license": "apache-2.0",
    }
    metrics = run.get("metrics", {})
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        f"# {repo} / {art['stage']}",
        "",
        f"Trained by matsql {__version__}, stage `{art['stage']}` of a study plan.",
        "",
        f"Command: `{art['manifest'].get('command', '')}`",
        f"Commit: `{art['manifest'].get('commit')}`",
        "",
        "## Training metrics",
        "",
        "```json",
        json.dumps(metrics, indent=2, default=str)[:4000],
        "```",
    ]
    if run.get("data"):
        lines += ["", "## Training data (sha256)", "", "```json", json.dumps(run["data"], indent=2), "```"]
    return "\n".join(lines) + "\n"


REPORTS = ("report-all/report.md", "report/report.md", "report.md")  # the first found: widest table
COMPARES = ("compare/compare.md", "compare-joint/compare.md", "compare.md")  # every one found


def readme_sections(run_dir: Path) -> list[Path]:
    """The results a run's README shows: one report table (the plan's ``report-all`` with every
    row when it ran, else the two-arm ``report``), then each compare."""
    table = next((run_dir / n for n in REPORTS if (run_dir / n).exists()), None)
    return ([table] if table else []) + [run_dir / n for n in COMPARES if (run_dir / n).exists()]


def build_folder(run_dir: Path, repo: str, out: Path, include_weights: bool = True) -> list[Path]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = []
    arts = find_artifacts(run_dir)
    readme = [f"# {repo}", "", "Agents and results of a matsql study run.", ""]
    for p in readme_sections(run_dir):
        readme += [p.read_text(), ""]
    readme += ["## Agents", ""] + [f"- [`{a['stage']}`]({a['stage']}/README.md)" for a in arts]
    (out / "README.md").write_text("\n".join(readme) + "\n")
    written.append(out / "README.md")
    for a in arts:
        dst = out / a["stage"]
        if include_weights:
            shutil.copytree(
                a["path"],
                dst,
                ignore=shutil.ignore_patterns("checkpoints", "checkpoint-*", "optimizer.pt", "*.tmp"),
            )
        else:
            dst.mkdir()
        (dst / "README.md").write_text(model_card(a, repo))
        written.append(dst / "README.md")
    return written


def push(folder: Path, repo: str, private: bool = True) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="matsql publish")
    return str(info)
