"""`diagnose validators A B`: the two tables are told apart (paths or --name), not both 'rollout.jsonl'."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from matsql.cli import app
from matsql.records import dumps
from tests.record_builders import cand, ok, record


def _rollout(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rec = record("q0", [cand(0, "SELECT 1", ok("a"), True, verdicts=("correct", "incorrect"), greedy=True)])
    path = folder / "rollout.jsonl"
    path.write_text(dumps(rec) + "\n")
    return path


def test_tables_of_same_named_files_are_titled_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = _rollout(Path("eval-collab")), _rollout(Path("eval-indep"))
    wide = {"COLUMNS": "300"}
    res = CliRunner().invoke(app, ["diagnose", "validators", str(a), str(b)], env=wide)
    assert res.exit_code == 0, res.output
    assert f"validator diagnostics: {a}" in res.output and f"validator diagnostics: {b}" in res.output
    res = CliRunner().invoke(
        app, ["diagnose", "validators", str(a), str(b), "--name", "COLLAB", "--name", "INDEP"], env=wide
    )
    assert "validator diagnostics: COLLAB" in res.output and "validator diagnostics: INDEP" in res.output
    res = CliRunner().invoke(app, ["diagnose", "validators", str(a), str(b), "--name", "COLLAB"])
    assert res.exit_code == 2 and "1 --name values for 2 rollout files" in " ".join(res.output.split())
