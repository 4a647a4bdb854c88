"""``experiment run --warm``: generation stages in worker processes kept between stages.

The end-to-end tests run real workers (``matsql.experiment.worker``) on real rollouts with the
tiny transformers model on CPU, with made-up card ids (``gpus=["0"]``): what a worker keeps is
the process, its imports and its models, whatever the device. The scheduling tests (room for a
training stage, the fallback to a process of its own) use a stand-in worker class.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from matsql.experiment.executors import LocalExecutor, StageFailed, warm_command
from matsql.experiment.plan import Stage, parse_plan
from matsql.experiment.runner import run_plan
from matsql.experiment.worker import MARK, Worker
from matsql.rollout.io import read_records


@pytest.fixture(scope="module")
def minibench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from matsql.benchmarks.commands import data_app

    data = tmp_path_factory.mktemp("mb") / "minibench"  # a folder it makes: it refuses to overwrite
    assert CliRunner().invoke(data_app, ["minibench", str(data)]).exit_code == 0
    return data


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat model with room for minibench's prompts (3,000 of its tokens)."""
    from tests.conftest import build_tiny_model, build_tiny_tokenizer, tiny_model_spec

    spec = tiny_model_spec()
    spec["model"] = {**spec["model"], "max_position_embeddings": 8192}
    out = tmp_path_factory.mktemp("long_model")
    tok = build_tiny_tokenizer()
    build_tiny_model(tok, spec).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _plan(tmp_path: Path, minibench: Path, model: Path, run: str):
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        f"defaults: {{backend: local, model: '{model}', device: cpu, max_tokens: 24}}\n"
        "agents: {planner: {}, val-sel: {}, val-cond: {}, fixer: {}}\n"
    )
    roll = f"rollout -b minibench --data {minibench} -a {agents} -o ${{out}} --limit 2 --k 2 --seed"
    return parse_plan(
        {
            "name": "warm",
            "run_dir": str(tmp_path / run),
            "stages": {
                "roll-a": {"cmd": f"{roll} 0", "out": "${run_dir}/a.jsonl", "resources": {"shards": 2}},
                "roll-b": {"cmd": f"{roll} 1", "out": "${run_dir}/b.jsonl", "resources": {"shards": 2}},
                "roll-c": {"cmd": f"{roll} 2", "out": "${run_dir}/c.jsonl"},
            },
        },
        base_dir=tmp_path,
    )


def _candidates(path: str) -> list[tuple[str, list[dict]]]:
    """What the agents wrote: every candidate, its critiques and fixes, per question."""
    return [(r.question_id, [c.model_dump() for c in r.candidates]) for r in read_records(path)]


def _pids(log: Path) -> list[int]:
    return [
        int(line.split("warm worker pid ")[1].split()[0])
        for line in log.read_text().splitlines()
        if line.startswith("$ ") and "warm worker pid" in line
    ]


def test_warm_stages_reuse_their_workers_and_write_what_cold_stages_write(tmp_path, minibench, long_model):
    cold = _plan(tmp_path, minibench, long_model, "cold")
    run_plan(cold, LocalExecutor(gpus=["0"], gpu_slots=2, echo=False))
    warm = _plan(tmp_path, minibench, long_model, "warm")
    ex = LocalExecutor(gpus=["0"], gpu_slots=2, echo=False, warm=True)
    out = run_plan(warm, ex)
    assert out == {"roll-a": "ran", "roll-b": "ran", "roll-c": "ran"}
    for name in ("roll-a", "roll-b", "roll-c"):
        assert _candidates(warm.stages[name].out) == _candidates(cold.stages[name].out), name
    logs = {n: warm.run_dir / "logs" / f"{n}.log" for n in warm.stages}
    a, b, c = (_pids(logs[n]) for n in ("roll-a", "roll-b", "roll-c"))
    assert len(set(a)) == 2 and set(b) == set(a)  # both shards ran again in the same two processes
    assert set(c) <= set(a)  # a one-slot stage took one of them
    text = logs["roll-b"].read_text()
    assert "its stage 2" in text and "kept from earlier stages: transformers model" in text
    assert "kept from earlier stages: nothing" in logs["roll-a"].read_text()  # a new process
    assert "Loading weights" in logs["roll-a"].read_text()  # loaded once per worker, not again
    assert "Loading weights" not in text + logs["roll-c"].read_text()
    assert not (warm.run_dir / "a.jsonl.shard0").exists()  # the shards were merged, as cold
    for pid in set(a):  # the plan's end stopped them
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not any(ex._idle.values()) and ex._free == ["0", "0"]


def test_a_worker_reports_exit_codes_output_and_its_own_death(tmp_path):
    w = Worker("0", dict(os.environ))
    lines: list[str] = []
    assert w.run(["--version"], lines.append) == 0
    assert any(line.startswith("matsql ") for line in lines)
    assert not any(MARK in line for line in lines)
    lines.clear()
    assert w.run(["rollout", "--no-such-option"], lines.append) == 2  # click's usage error
    assert "No such option" in "".join(lines)
    lines.clear()
    missing = tmp_path / "none.jsonl"
    assert w.run(["metrics", str(missing)], lines.append) != 0  # the command's own failure
    assert w.alive() and w.stages == 3
    w.proc.kill()
    w.proc.wait()
    assert w.run(["--version"], lines.append) != 0  # dead between stages: never 0
    w.stop()


class FakeWorker:
    """Stands in for :class:`Worker`: exit codes from a script, a record of starts and stops."""

    events: ClassVar[list[str]] = []
    codes: ClassVar[list[int]] = []

    def __init__(self, card: str, env: dict[str, str]) -> None:
        self.card, self.env, self.stages, self.stopped = card, env, 0, False
        self.pid = len([e for e in self.events if e.startswith("start")]) + 1
        self.events.append(f"start {self.pid} {env.get('MATSQL_GPU_MEMORY_FRACTION')}")

    def alive(self) -> bool:
        return not self.stopped

    def run(self, argv, sink) -> int:
        self.stages += 1
        self.events.append(f"run {self.pid} {argv[0]}")
        rc = self.codes.pop(0) if self.codes else 0
        if rc == 0:
            out = [a for a in argv if a.endswith(".jsonl") or ".jsonl.shard" in a]
            Path(out[0]).write_text("")
        sink(f"said {rc}\n")
        return rc

    def stop(self) -> str:
        if not self.stopped:
            self.events.append(f"stop {self.pid}")
        self.stopped = True
        return ""


def _executor(tmp_path: Path, codes: list[int] | None = None, gpu_slots: int = 2) -> LocalExecutor:
    FakeWorker.events, FakeWorker.codes = [], list(codes or [])
    ex = LocalExecutor(gpus=["0"], gpu_slots=gpu_slots, echo=False, warm=True)
    ex._worker_class = FakeWorker

    def spawn(argv, env):
        FakeWorker.events.append(f"process {argv[3]}")
        out = [a for a in argv if a.endswith(".jsonl")]
        if out:
            Path(out[0]).write_text("")
        return subprocess.Popen(
            [sys.executable, "-c", "print('ok')"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    ex._spawn = spawn
    return ex


def _roll(tmp_path: Path, name: str) -> Stage:
    out = str(tmp_path / f"{name}.jsonl")
    return Stage(name, ["rollout", "--out", out], out)


def test_a_training_stage_gets_the_card_only_after_idle_workers_stop(tmp_path):
    ex = _executor(tmp_path)
    ex.run(_roll(tmp_path, "r1"), tmp_path / "r1.log")
    pick = Stage(
        "pick", ["train", "pick-checkpoint", "x", "--out", str(tmp_path / "p.jsonl")], str(tmp_path / "p")
    )
    ex.run(pick, tmp_path / "pick.log")  # a generation stage: the same worker
    side = Stage("side", ["report", "x"], str(tmp_path / "side"))  # one slot, its own process
    ex.run(side, tmp_path / "side.log")  # one idle worker + one process = the card's two slots
    train = Stage("orpo", ["train", "orpo", "r.yaml"], str(tmp_path / "o"), resources={"slots": 2})
    ex.run(train, tmp_path / "orpo.log")
    assert FakeWorker.events == [
        "start 1 0.5000",  # a worker holds one slot's share of the card
        "run 1 rollout",
        "run 1 train",
        "process report",  # beside the idle worker: it fits
        "stop 1",  # the training stage needs both slots: the worker goes first
        "process train",
    ]
    ex.run(_roll(tmp_path, "r2"), tmp_path / "r2.log")
    assert FakeWorker.events[-2:] == ["start 2 0.5000", "run 2 rollout"]
    ex.close()
    assert FakeWorker.events[-1] == "stop 2" and not any(ex._idle.values())
    assert ex._free == ["0", "0"]


def test_idle_workers_stay_while_the_card_has_free_slots_for_them(tmp_path):
    """An H200 under the rule file: 4 slots, training takes 2. Two idle workers and a training
    stage fill the card, so the workers stay; a stage that takes the whole card stops them."""
    ex = _executor(tmp_path, gpu_slots=4)
    out = str(tmp_path / "r.jsonl")
    ex.run(Stage("r", ["rollout", "--out", out], out, resources={"shards": 2}), tmp_path / "r.log")
    assert FakeWorker.events[:2] == ["start 1 0.2500", "start 2 0.2500"]  # a quarter of the card each
    assert sorted(FakeWorker.events[2:]) == ["run 1 rollout", "run 2 rollout"]  # the shards, at once
    n = len(FakeWorker.events)
    half = Stage("orpo", ["train", "orpo", "r.yaml"], str(tmp_path / "o"), resources={"slots": 2})
    ex.run(half, tmp_path / "orpo.log")
    assert FakeWorker.events[n:] == ["process train"]  # no worker stopped
    whole = Stage("sft", ["train", "sft", "r.yaml"], str(tmp_path / "s"), resources={"slots": 4})
    ex.run(whole, tmp_path / "sft.log")
    assert sorted(FakeWorker.events[n + 1 :]) == ["process train", "stop 1", "stop 2"]
    assert FakeWorker.events[-1] == "process train"  # after both stopped
    assert ex._free.count("0") == 4


def test_a_stage_that_fails_in_a_worker_runs_again_as_its_own_process(tmp_path):
    ex = _executor(tmp_path, codes=[1, 1])
    log = tmp_path / "r1.log"
    ex.run(_roll(tmp_path, "r1"), log)  # failed warm, passed cold
    assert FakeWorker.events == ["start 1 0.5000", "run 1 rollout", "stop 1", "process rollout"]
    assert "again as its own process" in log.read_text() and "1 stage(s) so far" in log.read_text()
    assert ex.warm
    ex.run(_roll(tmp_path, "r2"), tmp_path / "r2.log")  # the second such stage: workers are given up
    assert not ex.warm and "no more workers in this run" in (tmp_path / "r2.log").read_text()
    n = len(FakeWorker.events)
    ex.run(_roll(tmp_path, "r3"), tmp_path / "r3.log")
    assert FakeWorker.events[n:] == ["process rollout"]
    assert ex._free == ["0", "0"]


def test_a_stage_that_fails_both_ways_fails(tmp_path):
    ex = _executor(tmp_path, codes=[3])

    def spawn(argv, env):
        FakeWorker.events.append("process")
        return subprocess.Popen(
            [sys.executable, "-c", "raise SystemExit(3)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    ex._spawn = spawn
    with pytest.raises(StageFailed):
        ex.run(_roll(tmp_path, "r1"), tmp_path / "r1.log")
    assert ex.warm and ex._strikes == 0  # not the worker's fault
    assert ex._free == ["0", "0"]


def test_only_generation_stages_go_to_workers(tmp_path):
    def st(*argv: str, **res) -> Stage:
        return Stage("s", list(argv), str(tmp_path / "o"), resources=res)

    assert [
        warm_command(st(*a))
        for a in (["rollout"], ["select", "x"], ["diagnose", "flip"], ["train", "pick-checkpoint", "r"])
    ] == [True] * 4
    assert [
        warm_command(st(*a)) for a in (["train", "orpo"], ["train", "sft"], ["labels", "build"], ["compare"])
    ] == [False] * 4
    ex = LocalExecutor(gpus=["0"], gpu_slots=2, echo=False, warm=True)
    assert ex._warm_fits(st("rollout"), ["0"], True, 1)
    assert not ex._warm_fits(st("rollout"), ["0", "0"], True, 1)  # a whole card: its own process
    assert ex._warm_fits(st("rollout", shards=2), ["0", "0"], False, 2)
    assert not ex._warm_fits(st("train", "orpo"), ["0"], True, 1)
    assert not LocalExecutor(gpus=["0"], echo=False)._warm_fits(st("rollout"), ["0"], True, 1)  # off


def test_warm_needs_the_local_executor(tmp_path):
    from matsql.cli import app

    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nrun_dir: run\nstages: {a: {cmd: 'report x', out: '${run_dir}/a'}}\n")
    res = CliRunner().invoke(app, ["experiment", "run", str(plan), "--warm", "--executor", "slurm"])
    assert res.exit_code != 0 and "--warm" in res.output


def test_same_records_tells_equal_runs_from_different_ones(tmp_path):
    """``scripts/same_records.py``: the check that --warm changed no record of a whole plan."""
    import json as _json

    from tests.record_builders import cand, ok, record

    root = Path(__file__).resolve().parents[1]

    def run(name: str, sql: str, elapsed: float) -> Path:
        d = tmp_path / name / "run"
        (d / "manifests").mkdir(parents=True)
        info = ok("d1").model_copy(update={"elapsed_s": elapsed})
        out = d / "roll.jsonl"
        rec = record("q1", [cand(0, sql, info, True)]).model_copy(
            update={"models": {"planner": f"?+{d}/sft-planner"}, "config_hash": name}  # paths differ
        )
        out.write_text(rec.model_dump_json() + "\n")
        manifest = {"stage": "roll", "status": "done", "argv": ["rollout"], "out": str(out)}
        (d / "manifests" / "roll.json").write_text(_json.dumps(manifest))
        return d

    a, b, c = run("a", "SELECT 1", 0.1), run("b", "SELECT 1", 0.7), run("c", "SELECT 2", 0.1)

    def same(x: Path, y: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(root / "scripts/same_records.py"), str(x), str(y)],
            capture_output=True,
            text=True,
        )

    res = same(a, b)  # execution times and the run's paths differ, records do not
    assert res.returncode == 0 and "1 of 1 rollout stage(s) wrote the same records" in res.stdout
    res = same(a, c)
    assert res.returncode == 1 and "roll: 1 of 1 record(s) differ" in res.stdout


def test_the_estimate_charges_a_kept_worker_less_except_first_in_a_lease():
    """``scripts/study_v2_estimate.py --warm-start-s``: a generation stage after another pays S s
    of start; after training, and as a lease's first GPU stage (a fresh machine), the full start."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("estimate", root / "scripts/study_v2_estimate.py")
    est = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["estimate"] = est  # its dataclasses look their module up
    try:
        spec.loader.exec_module(est)
    finally:
        del sys.modules["estimate"]
    full = est.VLLM_START_S

    def roll(name: str, gen_s: float):
        return est.Cost(name, "rollout (LoRA)", 1.0, gen_s + full, gen_s + full, True)

    train = est.Cost("orpo-x", "train orpo", 0.0, 100.0, 100.0, False)
    costs = [roll("a", 10), roll("b", 10), train, roll("c", 10), roll("d", 10)]
    warm = est.warm_costs(costs, set(), 5.0)
    assert [c.central_s for c in warm] == [10 + full, 15, 100, 10 + full, 15]
    assert [c.warm_cut for c in warm] == [0, full - 5, 0, 0, full - 5]
    one = est.schedule(warm, 10_000, "central_s")  # one lease: as charged
    assert [s for _, s in one[0]] == [10 + full, 15, 100, 10 + full, 15]
    # a lease that ends after "a": "b" opens the next on a fresh machine and pays in full
    two = est.schedule(warm, 10 + full, "central_s")
    assert two[0] == [("a", 10 + full)] and two[1][0] == ("b", 10 + full)
    assert est.schedule(costs, 10_000, "central_s") == [[(c.stage, c.central_s) for c in costs]]  # cold
