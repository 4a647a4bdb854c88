"""Plan graph: expansion, references, ordering, study constraints, resume, --until/--only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from matsql.experiment.constraints import check_study
from matsql.experiment.executors import StageFailed
from matsql.experiment.plan import PlanError, load_plan, parse_plan
from matsql.experiment.runner import run_plan, stage_status

TOY = Path(__file__).parent / "fixtures/experiment/toy.yaml"


class TouchExecutor:
    """Creates each stage's output instead of running matsql; records the order."""

    def __init__(self, fail: str | None = None, after_fail: tuple[str, ...] = ()):
        self.ran: list[str] = []
        self.fail = fail
        self.after_fail = after_fail  # stages that end only once the failing one has failed
        self.failed = threading.Event()

    def run(self, stage, log, on_start=None):
        if stage.name == self.fail:
            self.failed.set()
            raise StageFailed(f"{stage.name} failed")
        if stage.name in self.after_fail:
            assert self.failed.wait(10), f"{self.fail} never ran"
            # the failing stage has raised, but the runner sees it only once its manifest is
            # written and its future completes: end well after that, or the runner may take this
            # stage's end first and start what needs it (a race seen 2 in 12 runs)
            time.sleep(0.3)
        self.ran.append(stage.name)
        Path(stage.out).parent.mkdir(parents=True, exist_ok=True)
        Path(stage.out).write_text(" ".join(stage.argv))


def _plan(tmp_path, **over):
    return load_plan(TOY, overrides={"vars.root": str(tmp_path), **over})


def test_expansion_references_and_order(tmp_path):
    p = _plan(tmp_path)
    assert list(p.stages) == [
        "shared",
        "labels-collab",
        "labels-indep",
        "eval-collab",
        "eval-indep",
        "compare",
        "select-collab",
        "select-indep",
    ]
    ev = p.stages["eval-indep"]
    assert ev.arm == "indep" and ev.needs == ["labels-indep"]
    assert f"val-sel={tmp_path}/toy/labels-indep.txt" in ev.argv
    assert p.stages["compare"].argv[1:3] == [
        f"{tmp_path}/toy/eval-collab.jsonl",
        f"{tmp_path}/toy/eval-indep.jsonl",
    ]
    assert p.ancestors("eval-collab") == ["shared", "labels-collab", "eval-collab"]


def test_constraints_hold_and_catch_a_leak(tmp_path):
    assert len(check_study(_plan(tmp_path))) == 3
    raw = yaml.safe_load(TOY.read_text())
    raw["vars"]["root"] = str(tmp_path)
    raw["stages"]["eval-${arm}"]["cmd"] += " --seed ${arm}"  # arms differ in more than validators
    with pytest.raises(PlanError, match="differ in more than validators"):
        check_study(parse_plan(raw))
    raw = yaml.safe_load(TOY.read_text())
    raw["vars"].update(root=str(tmp_path), k=4)
    with pytest.raises(PlanError, match="K=8"):
        check_study(parse_plan(raw))


def test_bad_plans_name_the_problem(tmp_path):
    with pytest.raises(PlanError, match="unknown reference"):
        parse_plan({"name": "x", "stages": {"a": {"cmd": "x ${vars.nope}"}}})
    with pytest.raises(PlanError, match="needs unknown stage"):
        parse_plan({"name": "x", "stages": {"a": {"cmd": "x", "needs": ["b"]}}})
    with pytest.raises(PlanError, match="cycle"):
        parse_plan(
            {"name": "x", "stages": {"a": {"cmd": "x", "needs": ["b"]}, "b": {"cmd": "y", "needs": ["a"]}}}
        )


def test_run_skips_finished_stages_and_resumes_after_failure(tmp_path):
    p = _plan(tmp_path)
    ex = TouchExecutor(fail="eval-indep")
    with pytest.raises(StageFailed):
        run_plan(p, ex)
    assert ex.ran == ["shared", "labels-collab", "labels-indep", "eval-collab"]
    assert stage_status(p)["eval-indep"] == "pending"
    ex2 = TouchExecutor()
    out = run_plan(_plan(tmp_path), ex2)
    assert ex2.ran == ["eval-indep", "compare", "select-collab", "select-indep"]
    assert out["shared"] == "skipped"
    assert all(v == "done" for v in stage_status(p).values())


def test_until_only_and_stale_inputs(tmp_path):
    ex = TouchExecutor()
    run_plan(_plan(tmp_path), ex, until="eval-collab")
    assert ex.ran == ["shared", "labels-collab", "eval-collab"]
    with pytest.raises(PlanError, match="not done"):
        run_plan(_plan(tmp_path), TouchExecutor(), only="compare")
    # changing a var changes the eval commands: those stages and their dependents rerun
    ex3 = TouchExecutor()
    run_plan(_plan(tmp_path, **{"vars.k": "9"}), ex3, until="eval-collab")
    assert ex3.ran == ["eval-collab"]
    assert list((tmp_path / "toy").glob("eval-collab.jsonl.stale-*"))


def test_extends_arm_vars_env_and_resources(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "name": "base",
                "vars": {"k": "8", "shards": "1", "extra": ""},
                "env": {"A": "1"},
                "arms": {"x": {"mode": "collab"}, "y": {"mode": "independent"}},
                "stages": {
                    "s-${arm}": {
                        "foreach": "arm",
                        "resources": {"shards": "${vars.shards}"},
                        "cmd": "labels build --mode ${arm.mode} --k ${vars.k} ${vars.extra} --out ${out}",
                    }
                },
            }
        )
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump(
            {
                "extends": "base.yaml",
                "name": "child",
                "vars": {"shards": "4", "extra": "--a 1 --b"},
                "env": {"B": "2"},
            }
        )
    )
    p = load_plan(child, overrides={"run_dir": str(tmp_path / "run")})
    assert p.name == "child" and p.env == {"A": "1", "B": "2"}
    sx = p.stages["s-x"]
    assert sx.resources == {"shards": 4}  # typed once resolved (Resources)
    assert sx.argv[:4] == ["labels", "build", "--mode", "collab"]
    assert sx.argv[4:9] == ["--k", "8", "--a", "1", "--b"]  # a var holding several options is split
    assert p.stages["s-y"].argv[3] == "independent"
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\nstages: {}\n")
    with pytest.raises(PlanError, match="extends itself"):
        load_plan(loop)


def test_packaged_plans_satisfy_the_study_constraints():
    from importlib import resources

    from matsql.experiment.constraints import eval_protocol

    root = Path(__file__).resolve().parents[1]

    def packaged(name: str):
        return load_plan(
            Path(str(resources.files("matsql.experiment").joinpath("plans", name))), base_dir=root
        )

    plan = packaged("iter2.yaml")
    assert eval_protocol(plan) == {"eval_k": 8, "eval_temperature": 1.0}
    checks = check_study(plan)
    roles = [c.split(" stages ")[0] for c in checks if " stages differ" in c]
    assert roles == ["eval-iter1", "select-iter1", "eval", "select"]
    assert sum("K=8" in c for c in checks) == 2  # iter1 and iter2 evaluations
    assert {s.arm for s in plan.stages.values() if s.check.get("role") == "eval"} == {
        "collab",
        "indep",
        "joint",
    }
    # the CPU demo: one iteration, two arms, its own K (declared in vars.k_eval) and still shared
    # candidates, fixer and selector
    demo = packaged("demo.yaml")
    proto = eval_protocol(demo)
    assert proto["eval_k"] == int(demo.vars["k_eval"]) < 8
    with pytest.raises(PlanError, match="must run K=8"):
        check_study(demo)
    checks = check_study(demo, **proto)
    assert [c.split(" stages ")[0] for c in checks if " stages differ" in c] == ["eval", "select"]
    assert {s.arm for s in demo.stages.values() if s.check.get("role") == "eval"} == {"collab", "indep"}
    study = load_plan(root / "experiments/study-spider.yaml", base_dir=root)
    assert study.vars["eval"] == "spider-dev" and len(check_study(study)) == 6


def test_iter1_evaluations_are_held_to_the_same_constraints():
    from importlib import resources

    root = Path(__file__).resolve().parents[1]
    path = Path(str(resources.files("matsql.experiment").joinpath("plans", "iter2.yaml")))
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["eval-iter1-${arm}"]["cmd"] = raw["stages"]["eval-iter1-${arm}"]["cmd"].replace(
        "${stages.sft-fixer.out}", "${stages.orpo-iter1-val-sel-${arm}.out}"
    )  # a per-arm fixer: the arms would differ in more than validators
    plan = parse_plan(raw, source="iter2.yaml", base_dir=root)
    with pytest.raises(PlanError, match="eval-iter1 stages eval-iter1-collab and eval-iter1-indep differ"):
        check_study(plan)


def test_slurm_executor_runs_a_stage_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    from matsql.experiment.executors import SlurmExecutor

    plan = parse_plan(
        {"name": "s", "stages": {"bench": {"cmd": "data minibench ${out} --seed 3", "out": "${run_dir}/mb"}}},
        overrides={"run_dir": str(tmp_path / "run")},
    )
    ex = SlurmExecutor(tmp_path / "slurm", job_name="vl", cluster="debug")
    out = run_plan(plan, ex)
    assert out == {"bench": "ran"} and (tmp_path / "run" / "mb" / "dev.json").exists()
    assert "submitted job" in (tmp_path / "run" / "logs" / "bench.log").read_text()


class ConcurrentTouchExecutor(TouchExecutor):
    """Records start/end events; sleeps a little so that stages overlap when they can."""

    def __init__(self):
        import threading

        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def run(self, stage, log, on_start=None):
        import time

        with self.lock:
            self.events.append(("start", stage.name))
        time.sleep(0.05)
        super().run(stage, log, on_start)
        with self.lock:
            self.events.append(("end", stage.name))


def test_parallel_jobs_respect_dependencies_and_overlap(tmp_path):
    ex = ConcurrentTouchExecutor()
    out = run_plan(_plan(tmp_path), ex, jobs=2)
    assert set(out) == set(_plan(tmp_path).stages) and set(out.values()) == {"ran"}
    pos = {(kind, name): i for i, (kind, name) in enumerate(ex.events)}
    for s in _plan(tmp_path).stages.values():
        for d in s.needs:
            assert pos[("end", d)] < pos[("start", s.name)], (d, s.name)
    # the two labels stages (independent of each other) ran at the same time
    assert pos[("start", "labels-indep")] < pos[("end", "labels-collab")]
    assert run_plan(_plan(tmp_path), TouchExecutor(), jobs=2) == dict.fromkeys(out, "skipped")


def test_local_executor_shares_out_gpus_between_concurrent_stages():
    import threading
    import time

    from matsql.experiment.executors import LocalExecutor

    ex = LocalExecutor(gpus=["0", "1", "2"])
    a = ex._acquire(2)
    got: list[list[str]] = []
    t = threading.Thread(target=lambda: got.append(ex._acquire(2)))
    t.start()
    time.sleep(0.1)
    assert not got  # only one GPU is free: the second stage waits
    ex._release(a)
    t.join(timeout=5)
    assert len(got[0]) == 2 and set(got[0]) <= {"0", "1", "2"}
    ex._release(got[0])
    assert sorted(ex._acquire(8)) == ["0", "1", "2"]  # a request is capped at the GPUs that exist


def test_local_executor_gpu_slots_let_processes_share_a_card(tmp_path):
    from matsql.experiment.executors import LocalExecutor

    ex = LocalExecutor(gpus=["0", "1"], gpu_slots=2)
    first = ex._acquire(2)
    assert sorted(first) == ["0", "1"]  # spread over the cards before doubling up
    second = ex._acquire(2)
    assert sorted(second) == ["0", "1"]  # each card takes a second process
    ex._release(first + second)
    assert sorted(ex._acquire(9)) == ["0", "0", "1", "1"]  # capped at cards x slots
    with pytest.raises(ValueError, match="gpu_slots"):
        LocalExecutor(gpus=["0"], gpu_slots=0)


def _chain_plan(tmp_path):
    """side (ready at once, nothing after it) beside a 3-stage chain whose middle is sharded."""
    stage = lambda needs=(), **kw: {"cmd": "touch ${out}", "needs": list(needs), **kw}  # noqa: E731
    return parse_plan(
        {
            "name": "chain",
            "run_dir": str(tmp_path / "chain"),
            "stages": {
                "side": stage(out="${run_dir}/side"),
                "other": stage(out="${run_dir}/other"),
                "a1": stage(out="${run_dir}/a1"),
                "a2": stage(["a1"], out="${run_dir}/a2", resources={"shards": 4}),
                "a3": stage(["a2"], out="${run_dir}/a3"),
                "after-side": stage(["side"], out="${run_dir}/after-side"),
            },
        }
    )


def test_priority_order_puts_the_critical_path_and_preferred_targets_first(tmp_path):
    p = _chain_plan(tmp_path)
    # heights: a1 = 1 + 4 + 1, a2 = 5, side = 2, a3 = other = after-side = 1 (then plan order)
    assert p.priority_order() == ["a1", "a2", "side", "other", "a3", "after-side"]
    # what `prefer` needs goes first, whatever its height
    assert p.priority_order(["after-side"]) == ["side", "after-side", "a1", "a2", "other", "a3"]
    with pytest.raises(PlanError, match="no stage 'nope'"):
        p.priority_order(["nope"])


def test_ready_stages_start_in_priority_order(tmp_path):
    ex = ConcurrentTouchExecutor()
    run_plan(_chain_plan(tmp_path), ex, jobs=1, keep_going=True, prefer=["other"])
    starts = [name for kind, name in ex.events if kind == "start"]
    assert starts == ["other", "a1", "a2", "side", "a3", "after-side"]


def test_local_executor_serves_waiting_stages_by_rank():
    import threading
    import time

    from matsql.experiment.executors import LocalExecutor

    ex = LocalExecutor(gpus=["0", "1"], gpu_slots=2)
    held = ex._acquire(4, rank=0)
    got: list[tuple[str, list[str]]] = []
    low = threading.Thread(target=lambda: got.append(("low", ex._acquire(1, rank=9))))
    low.start()
    time.sleep(0.05)
    high = threading.Thread(target=lambda: got.append(("high", ex._acquire(2, rank=1))))
    high.start()
    time.sleep(0.05)
    ex._release(held[:2])  # two free slots: the later, better-ranked stage takes them
    high.join(timeout=5)
    time.sleep(0.05)
    assert [g[0] for g in got] == ["high"]
    assert sorted(got[0][1]) == ["0", "1"]  # one process per card, not two on one
    ex._release(held[2:])
    low.join(timeout=5)
    assert [g[0] for g in got] == ["high", "low"]


def test_until_takes_several_targets(tmp_path):
    out = run_plan(_plan(tmp_path), TouchExecutor(), until="labels-collab,eval-indep")
    assert list(out) == ["shared", "labels-collab", "labels-indep", "eval-indep"]


def test_keep_going_drops_only_what_needs_the_failed_stage(tmp_path):
    ex = TouchExecutor(fail="labels-collab")
    with pytest.raises(StageFailed, match="labels-collab failed"):
        run_plan(_plan(tmp_path), ex, jobs=2, keep_going=True)
    # the INDEP branch ran to its end; COLLAB's eval/select and the compare (needs both) did not
    assert set(ex.ran) == {"shared", "labels-indep", "eval-indep", "select-indep"}
    ex2 = TouchExecutor(fail="labels-collab", after_fail=("labels-indep",))  # no race to eval-indep
    with pytest.raises(StageFailed):
        run_plan(_plan(tmp_path / "b"), ex2, jobs=2)
    assert set(ex2.ran) == {"shared", "labels-indep"}  # without -k nothing new starts after the failure


def _spawned_envs(ex, stage, tmp_path) -> list[dict[str, str]]:
    """Run ``stage`` on ``ex`` with processes replaced by no-ops; return their environments."""
    import subprocess as sp

    envs: list[dict[str, str]] = []

    def spawn(argv, env):
        envs.append(env)
        return sp.Popen(["true"], stdout=sp.PIPE, stderr=sp.STDOUT, text=True)

    ex._spawn = spawn
    try:
        ex.run(stage, tmp_path / "log.txt")
    except StageFailed:  # the no-op shards write no files to merge; only the spawn matters
        pass
    except FileNotFoundError:
        pass
    return envs


def test_processes_get_their_share_of_a_shared_card(tmp_path):
    from matsql.experiment.executors import LocalExecutor
    from matsql.experiment.plan import Stage

    ex = LocalExecutor(gpus=["0", "1"], gpu_slots=4)
    train = Stage("orpo", ["train", "orpo", "r.yaml"], str(tmp_path / "o"), resources={"slots": 2})
    (env,) = _spawned_envs(ex, train, tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1")  # two slots of one card ...
    assert env["MATSQL_GPU_MEMORY_FRACTION"] == "0.5000"  # ... are half its memory
    roll = Stage(
        "eval",
        ["rollout", "--out", str(tmp_path / "e.jsonl")],
        str(tmp_path / "e.jsonl"),
        resources={"shards": 2},
    )
    envs = _spawned_envs(ex, roll, tmp_path)
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in envs) == ["0", "1"]
    assert {e["MATSQL_GPU_MEMORY_FRACTION"] for e in envs} == {"0.2500"}
    alone = LocalExecutor(gpus=["0"], gpu_slots=1)  # one process per card: no cap
    (env,) = _spawned_envs(alone, train, tmp_path)
    assert "MATSQL_GPU_MEMORY_FRACTION" not in env
    assert ex._free.count("0") == ex._free.count("1") == 4  # every slot came back


def test_cpu_stage_takes_no_slot_and_sees_no_card(tmp_path, monkeypatch):
    """``gpus: 0``: the stage runs while a GPU stage holds every slot (it would block forever
    if it queued for one), with no card visible and no memory share."""
    import threading

    from matsql.experiment.executors import LocalExecutor, needs_gpu
    from matsql.experiment.plan import Stage

    monkeypatch.setenv("MATSQL_GPU_MEMORY_FRACTION", "0.5")
    ex = LocalExecutor(gpus=["0"], gpu_slots=2)
    held = ex._acquire(2)  # a training stage has the whole card
    labels = Stage("labels", ["labels", "build"], str(tmp_path / "l"), resources={"gpus": 0})
    envs: list = []
    th = threading.Thread(target=lambda: envs.extend(_spawned_envs(ex, labels, tmp_path)), daemon=True)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive(), "a gpus: 0 stage waited for a GPU slot"
    (env,) = envs
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert "MATSQL_GPU_MEMORY_FRACTION" not in env
    assert ex._free == []  # it took nothing
    ex._release(held)
    unmarked = Stage("select", ["select", "x"], str(tmp_path / "s"))  # says nothing: may use a card
    (env,) = _spawned_envs(ex, unmarked, tmp_path)
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert [needs_gpu(s) for s in (labels, unmarked)] == [False, True]


def test_same_card_slots_wait_for_one_card_with_room():
    from matsql.experiment.executors import LocalExecutor

    ex = LocalExecutor(gpus=["0", "1"], gpu_slots=2)
    one = ex._acquire(1, same_card=False)
    other = ex._acquire(1, same_card=False)
    assert sorted(one + other) == ["0", "1"]  # each card has one slot left: 2 free, none together
    import threading

    got: list[list[str]] = []
    t = threading.Thread(target=lambda: got.append(ex._acquire(2, same_card=True)))
    t.start()
    t.join(timeout=0.2)
    assert not got
    ex._release(one)
    t.join(timeout=5)
    assert got and got[0] == one * 2
    ex._release(got[0] + other)
    assert len(set(ex._acquire(5, same_card=True))) == 1  # capped at one card's 2 slots


@pytest.mark.parametrize(("raw", "share"), [("", None), ("0.25", 0.25), ("1", 1.0)])
def test_memory_share_from_the_environment(monkeypatch, raw, share):
    from matsql.gpu import memory_share

    monkeypatch.setenv("MATSQL_GPU_MEMORY_FRACTION", raw)
    assert memory_share() == share


@pytest.mark.parametrize("raw", ["0", "1.5", "half"])
def test_a_bad_memory_share_is_a_clear_error(monkeypatch, raw):
    from matsql.gpu import memory_share

    monkeypatch.setenv("MATSQL_GPU_MEMORY_FRACTION", raw)
    with pytest.raises(ValueError, match="MATSQL_GPU_MEMORY_FRACTION"):
        memory_share()


def test_stage_seconds_exclude_the_wait_for_gpu_slots(tmp_path):
    """A stage queued for a card another stage holds: its manifest's ``waited_s`` is the queue,
    ``seconds`` the run alone (session 12's one-GPU study counted the queue as stage time)."""
    import json
    import threading
    import time

    from matsql.experiment.executors import LocalExecutor

    plan = parse_plan(
        {
            "name": "q",
            "run_dir": str(tmp_path / "run"),
            "stages": {"roll": {"cmd": "rollout --out ${out}", "out": "${run_dir}/roll.jsonl"}},
        },
        base_dir=tmp_path,
    )
    ex = LocalExecutor(gpus=["0"], gpu_slots=1)

    def spawn(argv, env):
        import subprocess as sp

        Path(plan.stages["roll"].out).write_text("{}")
        return sp.Popen(["sleep", "0.2"], stdout=sp.PIPE, stderr=sp.STDOUT, text=True)

    ex._spawn = spawn
    held = ex._acquire(1)  # another stage has the card
    threading.Timer(1.0, ex._release, args=(held,)).start()
    t0 = time.perf_counter()
    assert run_plan(plan, ex) == {"roll": "ran"}
    wall = time.perf_counter() - t0
    m = json.loads((tmp_path / "run" / "manifests" / "roll.json").read_text())
    assert m["waited_s"] >= 0.9  # the queue ...
    assert 0.2 <= m["seconds"] < wall - 0.8  # ... is not in the stage's seconds
    assert m["queued"] <= m["started"] <= m["finished"]


def test_a_stage_out_of_memory_in_its_share_runs_again_with_the_whole_card(tmp_path):
    """Session 12: SFT at half an H100 ran out of memory; alone on the card it fits. The executor
    retries such a stage once with every slot of the card; other failures, and out-of-memory with
    the whole card, still fail."""
    import subprocess as sp

    from matsql.experiment.executors import LocalExecutor
    from matsql.experiment.plan import Stage

    def executor(outcomes: list[str]):
        ex = LocalExecutor(gpus=["0"], gpu_slots=2, echo=False)
        envs: list[dict[str, str]] = []

        def spawn(argv, env):
            envs.append(env)
            said = outcomes.pop(0)
            rc = 0 if said == "ok" else 1
            return sp.Popen(
                ["sh", "-c", f"echo '{said}'; exit {rc}"], stdout=sp.PIPE, stderr=sp.STDOUT, text=True
            )

        ex._spawn = spawn
        return ex, envs

    train = Stage("sft", ["train", "sft", "r.yaml"], str(tmp_path / "o"), resources={"slots": 1})
    log = tmp_path / "sft.log"
    ex, envs = executor(["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 398.00 MiB", "ok"])
    ex.run(train, log)
    assert [e.get("MATSQL_GPU_MEMORY_FRACTION") for e in envs] == ["0.5000", None]  # half, then the card
    assert "again with the whole card" in log.read_text()
    assert ex._free == ["0", "0"]  # every slot came back

    ex, envs = executor(["ValueError: bad recipe", "ok"])
    with pytest.raises(StageFailed):
        ex.run(train, tmp_path / "other.log")
    assert len(envs) == 1  # not memory: no second try

    whole = Stage("sft2", ["train", "sft", "r.yaml"], str(tmp_path / "o2"), resources={"slots": 2})
    ex, envs = executor(["CUDA out of memory", "ok"])
    with pytest.raises(StageFailed):
        ex.run(whole, tmp_path / "whole.log")
    assert len(envs) == 1  # it had the card already

    # an earlier attempt's out-of-memory in the same log does not count for this one
    ex, envs = executor(["ValueError: bad recipe", "ok"])
    with pytest.raises(StageFailed):
        ex.run(train, log)
    assert len(envs) == 1


def _lease_plan(tmp_path):
    """An ORPO run, its pick, and a rollout that needs neither."""
    return parse_plan(
        {
            "name": "lease",
            "run_dir": str(tmp_path / "run"),
            "stages": {
                "orpo": {"cmd": "train orpo r.yaml --set output_dir=${out}", "out": "${run_dir}/orpo"},
                "pick": {
                    "cmd": "train pick-checkpoint ${stages.orpo.out} --out ${out}",
                    "needs": ["orpo"],
                    "out": "${run_dir}/pick",
                },
                "roll": {"cmd": "rollout --out ${out}", "out": "${run_dir}/roll.jsonl"},
            },
        },
        base_dir=tmp_path,
    )


def test_past_the_training_deadline_a_training_stage_waits_for_the_next_run(tmp_path):
    """Lease 3 ended between an ORPO run and its pick: its minutes were lost. Past
    ``train_by`` no training stage starts (nor what needs it); other stages still do, and the
    next run (the next lease) starts them."""
    from matsql.experiment.runner import Deadlines

    now = time.time()
    for jobs, keep_going in ((1, False), (2, True)):
        p = _lease_plan(tmp_path / f"j{jobs}")
        ex = TouchExecutor()
        out = run_plan(p, ex, jobs=jobs, keep_going=keep_going, deadlines=Deadlines(train_by=now - 1))
        assert out == {"orpo": "deferred", "pick": "blocked", "roll": "ran"} and ex.ran == ["roll"]
        assert stage_status(p) == {"orpo": "pending", "pick": "pending", "roll": "done"}
        out = run_plan(
            p, TouchExecutor(), jobs=jobs, keep_going=keep_going, deadlines=Deadlines(now + 60, now + 60)
        )
        assert out == {"orpo": "ran", "pick": "ran", "roll": "skipped"}
    # past start_by nothing starts at all
    p = _lease_plan(tmp_path / "all")
    assert set(run_plan(p, TouchExecutor(), deadlines=Deadlines(start_by=now - 1)).values()) == {
        "deferred",
        "blocked",
    }


def test_a_deadline_that_passes_while_a_stage_waits_for_the_card_defers_it_and_frees_its_slots(tmp_path):
    """The deadline is checked again once the stage holds its slots (it may have queued behind
    another stage for minutes); a stage deferred then gives its slots back."""
    import json
    import subprocess as sp

    from matsql.experiment.executors import LocalExecutor
    from matsql.experiment.runner import Deadlines

    p = _lease_plan(tmp_path)
    ex = LocalExecutor(gpus=["0"], gpu_slots=1)

    def spawn(argv, env):
        out = p.stages["roll"].out
        Path(out).write_text("{}")
        return sp.Popen(["true"], stdout=sp.PIPE, stderr=sp.STDOUT, text=True)

    ex._spawn = spawn
    held = ex._acquire(1)  # another stage has the card past the training deadline
    threading.Timer(0.6, ex._release, args=(held,)).start()
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(run_plan(p, ex, deadlines=Deadlines(train_by=time.time() + 0.3)))
    )
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "the deferred stage kept its slot: the rollout never got the card"
    assert result == {"orpo": "deferred", "pick": "blocked", "roll": "ran"}
    m = json.loads((tmp_path / "run" / "manifests" / "orpo.json").read_text())
    assert m["status"] == "deferred" and not Path(p.stages["orpo"].out).exists()


def test_deadline_forms():
    from matsql.experiment.commands import _when

    assert _when(None, "--deadline") is None
    assert _when("1700000000", "--deadline") == 1700000000.0
    assert abs(_when("+90", "--deadline") - (time.time() + 90)) < 5
    with pytest.raises(Exception, match="expected unix seconds or \\+SECONDS"):
        _when("soon", "--deadline")
