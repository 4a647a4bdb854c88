"""`matsql publish --dry-run` assembles model cards and the results README from a run folder."""

import json

from typer.testing import CliRunner

from matsql.cli import app


def _fake_run(root):
    adapter = root / "sft-planner"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "checkpoints").mkdir()
    (adapter / "run.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "base_model": "qwen2.5-coder-0.5b-instruct",
                "metrics": {"train": {"loss": 0.5}},
                "data": [{"path": "pairs", "sha256": "ab12"}],
            }
        )
    )
    (root / "rollout.jsonl").write_text("")
    (root / "manifests").mkdir()
    for stage, out in (("sft-planner", adapter), ("eval", root / "rollout.jsonl")):
        (root / "manifests" / f"{stage}.json").write_text(
            json.dumps(
                {
                    "stage": stage,
                    "status": "done",
                    "out": str(out),
                    "command": f"matsql {stage}",
                    "commit": "abc",
                }
            )
        )
    (root / "report").mkdir()
    (root / "report" / "report.md").write_text("| config | selector EX |\n|---|---|\n| COLLAB | 61.0 |\n")


def test_dry_run_writes_cards_and_readme_and_pushes_nothing(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    res = CliRunner().invoke(app, ["publish", str(run), "--repo", "org/matsql-study", "--dry-run"])
    assert res.exit_code == 0, res.output
    folder = run / "publish"
    readme = (folder / "README.md").read_text()
    assert "COLLAB | 61.0" in readme and "sft-planner" in readme
    card = (folder / "sft-planner" / "README.md").read_text()
    assert card.startswith("---\n") and "base_model: qwen2.5-coder-0.5b-instruct" in card
    assert "library_name: peft" in card and '"loss": 0.5' in card and "ab12" in card
    assert (folder / "sft-planner" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not (folder / "sft-planner" / "checkpoints").exists()
    assert not (folder / "eval").exists()  # a rollout file is not a model


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["publish", str(tmp_path), "--repo", "org/x", "--dry-run"])
    assert res.exit_code == 2 and "not a run folder" in res.output


def test_readme_shows_the_widest_report_and_every_compare(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    (run / "report-all").mkdir()
    (run / "report-all" / "report.md").write_text("| config | selector EX |\n|---|---|\n| JOINT | 62.0 |\n")
    for name, verdict in (("compare", "COLLAB vs INDEP: tie"), ("compare-joint", "JOINT vs INDEP: tie")):
        (run / name).mkdir()
        (run / name / "compare.md").write_text(f"# {verdict}\n")
    res = CliRunner().invoke(app, ["publish", str(run), "--repo", "org/matsql-study", "--dry-run"])
    assert res.exit_code == 0, res.output
    readme = (run / "publish" / "README.md").read_text()
    assert "JOINT | 62.0" in readme and "COLLAB | 61.0" not in readme  # report-all, not report
    assert readme.index("COLLAB vs INDEP: tie") < readme.index("JOINT vs INDEP: tie")
