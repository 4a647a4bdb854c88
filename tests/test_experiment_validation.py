"""Stage hashes cover the files a command names; plans and agents files reject unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.experiment.plan import PlanError, parse_plan
from matsql.experiment.runner import run_plan, stage_report, stage_status
from matsql.team import parse_team
from tests.test_experiment import TouchExecutor


def _files_plan(tmp_path: Path):
    """a names recipe-a; b needs a; c names recipe-c and agents; d needs b and c; e stands alone."""
    for name in ("recipe-a.yaml", "recipe-c.yaml", "agents.yaml", "other.yaml"):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_text(f"{name}: 1\n")
    raw = {
        "name": "files",
        "vars": {"root": str(tmp_path)},
        "stages": {
            "a": {"cmd": "train sft ${vars.root}/recipe-a.yaml --set output_dir=${out}"},
            "b": {"needs": ["a"], "cmd": "labels build --rollouts ${stages.a.out} --out ${out}"},
            "c": {
                "cmd": "rollout --agents=${vars.root}/agents.yaml --recipe ${vars.root}/recipe-c.yaml --out ${out}"
            },
            "d": {"needs": ["b", "c"], "cmd": "compare ${stages.b.out} ${stages.c.out} --out ${out}"},
            "e": {"cmd": "train sft ${vars.root}/other.yaml --set output_dir=${out}"},
        },
    }
    return parse_plan(raw, source="files.yaml", overrides={"run_dir": str(tmp_path / "run")})


@pytest.mark.parametrize(
    ("edited", "stale"),
    [
        ("recipe-a.yaml", {"a", "b", "d"}),
        ("recipe-c.yaml", {"c", "d"}),
        ("agents.yaml", {"c", "d"}),  # named as --agents=PATH
        ("other.yaml", {"e"}),
    ],
)
def test_editing_a_named_file_makes_exactly_its_downstream_stale(tmp_path, edited, stale):
    plan = _files_plan(tmp_path)
    run_plan(plan, TouchExecutor())
    assert set(stage_status(plan).values()) == {"done"}
    (tmp_path / edited).write_text("edited: 2\n")
    status = stage_status(_files_plan(tmp_path))
    assert {n for n, st in status.items() if st == "stale"} == stale
    assert {n for n, st in status.items() if st == "done"} == set(status) - stale
    report = stage_report(_files_plan(tmp_path))
    first = sorted(stale)[0]  # the stage naming the file says which file changed
    assert any(edited in why for why in report[first][1])
    # a rerun reruns exactly the stale stages
    ex = TouchExecutor()
    run_plan(_files_plan(tmp_path), ex)
    assert set(ex.ran) == stale


def test_status_names_a_version_change_and_the_cli_shows_why(tmp_path, monkeypatch):
    import matsql
    from matsql.cli import app

    plan = _files_plan(tmp_path)
    run_plan(plan, TouchExecutor())
    monkeypatch.setattr(matsql, "__version__", "99.0")
    report = stage_report(plan)
    assert all(st == "stale" for st, _ in report.values())
    assert any("99.0" in w for w in report["e"][1])
    monkeypatch.undo()
    (tmp_path / "recipe-a.yaml").write_text("lr: 3\n")
    plan_file = tmp_path / "plan.yaml"
    import yaml

    plan_file.write_text(yaml.safe_dump(plan.raw | {"run_dir": str(tmp_path / "run")}))
    res = CliRunner().invoke(app, ["experiment", "status", str(plan_file)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "recipe-a.yaml changed" in res.output


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stages": {"a": {"cmd": "x"}, "b": {"cmd": "y", "need": ["a"]}}}, "stage b: unknown key 'need'"),
        ({"stages": {"sft": {"cmd": "x"}, "b": {"cmd": "y", "needs": "sft"}}}, "needs must be a list"),
        ({"stages": {"a": {"cmd": "x"}}, "varz": {}}, "unknown key 'varz' \\(did you mean 'vars'"),
        ({"stages": {"a": {"cmd": "x", "resources": {"gpu": 1}}}}, "resources: unknown key 'gpu'"),
    ],
)
def test_plan_typos_are_errors_naming_the_file_and_key(raw, message):
    with pytest.raises(PlanError, match=f"^plan.yaml: .*{message}"):
        parse_plan({"name": "x", **raw}, source="plan.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"agents": {"val-sel": {"model": "m", "temprature": 1.0}}},
            "agents.val-sel: unknown key 'temprature' \\(did you mean 'temperature'",
        ),
        (
            {"defaults": {"model": "m", "max_token": 8}, "agents": {"planner": {}}},
            "defaults: unknown key 'max_token'",
        ),
        (
            {"agents": {"fixer": {"backend": "openai", "model": "m", "base_url": "u", "batch_size": 4}}},
            "agents.fixer: unknown key 'batch_size'",
        ),
        ({"agent": {}, "agents": {}}, "unknown key 'agent'"),
        (
            {"agents": {"planner": {"model": "m", "stop": 3}}},
            "agents.planner: 'stop' must be a string or a list",
        ),
    ],
)
def test_agents_file_typos_are_errors_naming_the_file_and_key(data, message):
    with pytest.raises(ValueError, match=f"^team.yaml: {message}"):
        parse_team(data, source="team.yaml")


def test_one_stop_string_stays_one_and_real_agents_files_load():
    from matsql.team import load_team

    team = parse_team(
        {"agents": {"planner": {"model": "m", "stop": "```"}, "fixer": {"model": "m", "stop": ["a", "b"]}}}
    )
    assert team["planner"].stop == ["```"] and team["fixer"].stop == ["a", "b"]
    root = Path(__file__).resolve().parents[1] / "experiments" / "agents"
    for f in sorted(root.glob("*.yaml")):
        assert load_team(f).agents, f
