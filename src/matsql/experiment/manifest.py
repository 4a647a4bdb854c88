"""Stage manifests: what ran, from which inputs, with what result. A stage whose manifest says
``done`` with the same config hash (its command + its inputs' hashes) is skipped on re-run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matsql.experiment.plan import Stage


def manifest_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "manifests" / f"{stage}.json"


def read_manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    p = manifest_path(run_dir, stage)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def stage_hash(stage: Stage, input_hashes: dict[str, str]) -> str:
    blob = json.dumps({"argv": stage.argv, "inputs": input_hashes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=10
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def collect_metrics(out: Path) -> dict[str, Any]:
    """Metrics a stage left beside its output (``metrics.json`` / ``run.json`` / ``*.metrics.json``)."""
    cands = []
    if out.is_dir():
        cands = [out / "metrics.json", out / "run.json", out / "yield.json", out / "compare.json"]
    else:
        cands = [out.with_suffix(".metrics.json"), out.parent / (out.name + ".metrics.json")]
    found: dict[str, Any] = {}
    for c in cands:
        if c.exists():
            try:
                found[c.name] = json.loads(c.read_text())
            except json.JSONDecodeError:
                continue
    return found


def write_manifest(run_dir: Path, stage: Stage, data: dict[str, Any]) -> None:
    p = manifest_path(run_dir, stage.name)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, p)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
