"""Paths fit to commit: relative to the repo, or from a run folder's name (issue 20)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from matsql.evaluate.portable import portable_path, portable_text

REPO = Path(__file__).resolve().parents[1]


def test_relative_paths_stay_and_repo_paths_become_relative(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert portable_path("runs/demo/x.jsonl") == "runs/demo/x.jsonl"
    assert (
        portable_path(REPO / "runs" / "demo" / "eval-collab" / "picks.jsonl")
        == "runs/demo/eval-collab/picks.jsonl"
    )
    assert portable_path(REPO / "results" / ".." / "runs" / "a.jsonl") == "runs/a.jsonl"


def test_outside_the_repo_paths_start_at_the_shared_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a cwd beside the run (no repo markers above the tmp folder)
    run = tmp_path / "demo-run4"
    got = portable_path(run / "eval-collab" / "picks.jsonl", base=run / "compare")
    assert got == "demo-run4/eval-collab/picks.jsonl"
    assert portable_path("/elsewhere/deep/folder/file.json") == "folder/file.json"
    text = f'"path": "{run}/rollout-iter1.jsonl", cmd: rollout --out {run}/eval-indep/rollout.jsonl'
    out = portable_text(text, base=run / "compare")
    assert (
        out
        == '"path": "demo-run4/rollout-iter1.jsonl", cmd: rollout --out demo-run4/eval-indep/rollout.jsonl'
    )


def test_committed_results_hold_no_absolute_paths() -> None:
    """The cleanup script's check over the committed files of results/ (text files; gzipped
    rollouts aside; a run still being written there is not committed yet)."""
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "portable_results.py"),
            str(REPO / "results"),
            "--check",
            "--tracked",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout


def test_cleanup_rewrites_device_paths(tmp_path: Path) -> None:
    f = tmp_path / "r" / "compare.json"
    f.parent.mkdir()
    f.write_text('{"A": "/root/matsql/repo/runs/study/eval-collab/picks.jsonl", "B": "/tmp/demo-run4/x"}\n')
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "portable_results.py"), str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0
    assert f.read_text() == '{"A": "runs/study/eval-collab/picks.jsonl", "B": "demo-run4/x"}\n'
