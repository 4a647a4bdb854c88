"""Stage hashes cover the files a command names; plans and agents files reject unknown keys."""

from __future__ import annotations

import json
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
        ({"stages": {"a": {"cmd": "x", "check": {"rol": "eval"}}}}, "check: unknown key 'rol'"),
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


class RecordingJob:
    def __init__(self, n: int, fn, args):
        self.job_id = str(n)
        self.fn, self.args = fn, args

    def result(self):
        argv = self.args[0]
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        if "--shard" in argv:  # a rollout shard: one record for this shard's question
            i = argv[argv.index("--shard") + 1].split("/")[0]
            Path(out).write_text(json.dumps({"question": {"question_id": f"q{i}"}, "candidates": []}) + "\n")
        elif out:
            Path(out).write_text("done")
        else:  # train sft RECIPE --set output_dir=OUT
            out = next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir="))
            Path(out).mkdir(parents=True, exist_ok=True)


class RecordingCluster:
    """Stands in for submitit's AutoExecutor: records each job's parameters and command in
    ``jobs`` (shared by every executor made from one recorder)."""

    def __init__(self, jobs: list | None = None):
        self.params: dict = {}
        self.jobs: list[tuple[dict, list[str], bool]] = (
            [] if jobs is None else jobs
        )  # (parameters, argv, in array)
        self._in_batch = False

    def factory(self):
        return lambda: RecordingCluster(self.jobs)

    def update_parameters(self, **kw):
        self.params.update(kw)

    def submit(self, fn, *args):
        self.jobs.append((dict(self.params), list(args[0]), self._in_batch))
        return RecordingJob(len(self.jobs), fn, args)

    def batch(self):
        import contextlib

        @contextlib.contextmanager
        def cm():
            self._in_batch = True
            yield
            self._in_batch = False

        return cm()


def test_slurm_jobs_ask_for_what_each_stage_declares(tmp_path):
    from matsql.experiment.executors import SlurmExecutor

    raw = {
        "name": "gpu",
        "slurm": {"account": "proj1", "partition": "gpu", "constraint": "h100"},
        "stages": {
            "eval": {
                "resources": {"shards": 3, "gpus": 1, "cpus": 8, "mem_gb": 64, "time_min": 90},
                "cmd": "rollout --benchmark spider-dev --agents a.yaml --out ${out}",
                "out": "${run_dir}/eval.jsonl",
            },
            "sft": {
                "needs": ["eval"],
                "resources": {"processes": 4, "time_min": 240, "slurm": {"qos": "long"}},
                "cmd": "train sft r.yaml --set output_dir=${out}",
            },
            "labels": {  # gpus: 0, as the plans mark CPU stages: no GPU asked for, not even 0
                "needs": ["eval"],
                "resources": {"gpus": 0},
                "cmd": "labels build --rollouts ${stages.eval.out} --out ${out}",
            },
        },
    }
    plan = parse_plan(raw, source="gpu.yaml", overrides={"run_dir": str(tmp_path / "run")})
    cluster = RecordingCluster()
    ex = SlurmExecutor(
        tmp_path / "slurm", env=plan.env, make_executor=cluster.factory(), **{**plan.slurm, "qos": "normal"}
    )
    assert run_plan(plan, ex) == {"eval": "ran", "sft": "ran", "labels": "ran"}
    by_stage: dict[str, list] = {}
    for params, argv, in_array in cluster.jobs:
        by_stage.setdefault(params["name"], []).append((params, argv, in_array))
    assert set(by_stage) == {"vl-eval", "vl-sft", "vl-labels"}  # the default job name prefix is vl
    shards = by_stage["vl-eval"]
    assert len(shards) == 3 and all(in_array for _, _, in_array in shards)
    p = shards[0][0]
    assert (p["gpus_per_node"], p["cpus_per_task"], p["mem_gb"], p["timeout_min"]) == (1, 8, 64.0, 90)
    assert (p["slurm_account"], p["slurm_partition"], p["slurm_qos"]) == ("proj1", "gpu", "normal")
    assert p["slurm_constraint"] == "h100"
    assert p["slurm_array_parallelism"] == 3
    assert [a[a.index("--shard") + 1] for _, a, _ in shards] == ["0/3", "1/3", "2/3"]
    assert (tmp_path / "run" / "eval.jsonl").read_text().count("question_id") == 3  # shards merged
    (sp, sargv, s_array) = by_stage["vl-sft"][0]
    assert len(by_stage["vl-sft"]) == 1 and not s_array
    assert sp["gpus_per_node"] == 4 and sp["timeout_min"] == 240 and sp["slurm_qos"] == "long"
    assert sargv[2:6] == ["accelerate.commands.launch", "--num_processes", "4", "--multi_gpu"]
    lp = by_stage["vl-labels"][0][0]  # runs after sft: its GPUs must not leak into this job
    assert "gpus_per_node" not in lp and lp["slurm_account"] == "proj1"
    assert lp["timeout_min"] == SlurmExecutor.DEFAULT_TIME_MIN
    from matsql.experiment.executors import slurm_parameters

    # a plan-level default time in the stage's own words, and any other sbatch option passed through
    assert slurm_parameters({"time_min": 30, "reservation": "r"}) == {
        "timeout_min": 30,
        "slurm_additional_parameters": {"reservation": "r"},
    }


def test_slurm_options_reach_the_jobs_from_the_command_line(tmp_path, monkeypatch):
    import yaml

    from matsql.cli import app
    from matsql.experiment import executors

    made: list[dict] = []
    cluster = RecordingCluster()

    class Recorder(executors.SlurmExecutor):
        def __init__(self, folder, **kw):
            made.append(kw)
            super().__init__(folder, make_executor=cluster.factory(), **kw)

    monkeypatch.setattr(executors, "SlurmExecutor", Recorder)
    plan = tmp_path / "p.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "name": "p",
                "run_dir": str(tmp_path / "run"),
                "slurm": {"account": "a1", "partition": "p1"},
                "stages": {"x": {"cmd": "labels build --out ${out}"}},
            }
        )
    )
    args = ["experiment", "run", str(plan), "--executor", "slurm", "--partition", "p2", "--qos", "q"]
    res = CliRunner().invoke(app, [*args, "--slurm", "array_parallelism=2", "--slurm", "reservation=r"])
    assert res.exit_code == 0, res.output
    kw = made[0]
    assert kw["job_name"] == "vl"
    assert (kw["account"], kw["partition"], kw["qos"], kw["array_parallelism"]) == ("a1", "p2", "q", 2)
    params = cluster.jobs[0][0]
    assert params["name"] == "vl-x" and params["slurm_partition"] == "p2" and params["slurm_qos"] == "q"
    assert params["slurm_additional_parameters"] == {"reservation": "r"}  # any other sbatch option


def test_keep_going_is_spelled_out_and_k_is_a_hidden_alias(tmp_path):
    import yaml

    from matsql.cli import app

    plan = _files_plan(tmp_path)
    run_plan(plan, TouchExecutor())  # every stage done: the CLI run below only skips
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan.raw | {"run_dir": str(tmp_path / "run")}))
    help_text = CliRunner().invoke(app, ["experiment", "run", "--help"], env={"COLUMNS": "200"}).output
    assert "--keep-going" in help_text and " -k " not in help_text
    res = CliRunner().invoke(app, ["experiment", "run", str(plan_file), "-k"])
    assert res.exit_code == 0, res.output
    assert "-k is deprecated" in res.output and "0 stage(s) ran, 5 skipped" in res.output


def test_submitit_debug_executor_takes_the_parameters_and_runs_an_array(tmp_path):
    """submitit's own debug executor accepts every parameter the SLURM executor sets (its
    validation rejects unknown names) and runs the shards of an array; the commands are cheap
    stand-ins for the rollout shards."""
    import sys

    from matsql.experiment.executors import SlurmExecutor

    class CheapShards(SlurmExecutor):
        def commands(self, stage):
            n = int(stage.resources["shards"])
            write = "import json,sys; open(sys.argv[1],'w').write(json.dumps({'question':{'question_id':sys.argv[2]}})+'\\n')"
            return [[sys.executable, "-c", write, f"{stage.out}.shard{i}", f"q{i}"] for i in range(n)]

    raw = {
        "name": "dbg",
        "slurm": {"account": "a", "partition": "p", "qos": "q", "reservation": "r"},
        "stages": {
            "eval": {
                "resources": {"shards": 2, "gpus": 1, "cpus": 2, "mem_gb": 4, "time_min": 10},
                "cmd": "rollout --out ${out}",
                "out": "${run_dir}/eval.jsonl",
            }
        },
    }
    plan = parse_plan(raw, source="dbg.yaml", overrides={"run_dir": str(tmp_path / "run")})
    ex = CheapShards(tmp_path / "slurm", cluster="debug", **plan.slurm)
    assert run_plan(plan, ex) == {"eval": "ran"}
    lines = (tmp_path / "run" / "eval.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["question"]["question_id"] for x in lines) == ["q0", "q1"]
    assert (tmp_path / "run" / "logs" / "eval.log").read_text().count("submitted job") == 2
