"""The device helpers that bring finished stages home: ship.py packs, collect.sh unpacks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ship():
    spec = importlib.util.spec_from_file_location("ship", ROOT / "scripts/device/ship.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stage(run: Path, name: str, out: str, status: str = "done", argv: list[str] | None = None) -> None:
    (run / "manifests").mkdir(parents=True, exist_ok=True)
    (run / "logs").mkdir(exist_ok=True)
    m = {"status": status, "out": f"/root/matsql/repo/runs/{run.name}/{out}", "argv": argv or []}
    (run / "manifests" / f"{name}.json").write_text(json.dumps(m))
    (run / "logs" / f"{name}.log").write_text(f"log of {name}\n")


def test_ship_sends_each_done_stage_once_without_checkpoints_and_collect_restores_it(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    run = tmp_path / "machine" / "runs" / "study"
    ad = run / "sft-x"
    (ad / "checkpoints" / "checkpoint-7").mkdir(parents=True)
    (ad / "checkpoints" / "checkpoint-7" / "optimizer.pt").write_bytes(b"0" * 1000)
    save_file({"w": torch.ones(4, 4, dtype=torch.float32)}, ad / "adapter_model.safetensors")
    (ad / "adapter_config.json").write_text("{}")
    (run / "roll.jsonl").write_text('{"q": 1}\n')
    _stage(run, "sft-x", "sft-x")
    _stage(run, "roll", "roll.jsonl")
    _stage(run, "later", "later.jsonl", status="running")

    ship = _ship()
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    assert ship.ship(run, out1, max_files=1) == ["sft-x"]  # the call's file limit: one per poll
    assert ship.ship(run, out2) == ["roll"]
    assert ship.ship(run, tmp_path / "out3") == []  # nothing new; 'later' is not done

    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(
        ["bash", str(ROOT / "scripts/device/collect.sh"), str(out1), str(out2)], cwd=home, check=True
    )
    got = home / "runs" / "study"
    assert (got / "roll.jsonl").read_text() == '{"q": 1}\n'
    assert (got / "logs" / "sft-x.log").exists() and (got / "manifests" / "roll.json").exists()
    assert not (got / "sft-x" / "checkpoints" / "checkpoint-7").exists()
    w = load_file(got / "sft-x" / "adapter_model.safetensors")["w"]
    assert w.dtype == torch.bfloat16 and torch.equal(w.float(), torch.ones(4, 4))


def test_a_run_whose_checkpoints_a_later_stage_reads_is_held_until_that_stage_is_done(tmp_path):
    """Lease 3 ended between orpo-iter1-val-cond-indep and its pick: the run came home without
    the checkpoints its pick reads. Held back, it trains again on the next lease instead."""
    run = tmp_path / "runs" / "study"
    orpo, sft = run / "orpo-a", run / "sft-a"
    for d, trainer in (
        (orpo, "save_strategy: steps\n  save_steps: 40\n  save_total_limit: null"),
        (sft, "save_strategy: epoch\n  save_total_limit: 1"),  # checkpoints no stage reads
    ):
        (d / "checkpoints" / "abc" / "checkpoint-40").mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
        (d / "recipe.yaml").write_text(f"method: x\ntrainer:\n  {trainer}\n")
    _stage(run, "sft-a", "sft-a")
    _stage(run, "orpo-a", "orpo-a")
    ship = _ship()
    assert ship.ship(run, tmp_path / "o1") == ["sft-a"]
    _stage(run, "pick-a", "pick-a", status="running", argv=["train", "pick-checkpoint", str(orpo)])
    assert ship.ship(run, tmp_path / "o2") == []  # its reader has not finished
    (run / "pick-a").mkdir()
    _stage(run, "pick-a", "pick-a", argv=["train", "pick-checkpoint", "/root/matsql/repo/runs/study/orpo-a"])
    assert sorted(ship.ship(run, tmp_path / "o3")) == ["orpo-a", "pick-a"]


def test_big_stages_are_split_into_parts_that_collect_joins(tmp_path):
    import os

    run = tmp_path / "runs" / "p"
    run.mkdir(parents=True)
    (run / "big.jsonl").write_bytes(os.urandom(int(2.5 * 2**20)))  # incompressible
    _stage(run, "big", "big.jsonl")
    ship = _ship()
    ship.PART = 2**20
    out = tmp_path / "out"
    assert ship.ship(run, out) == ["big"]
    assert sorted(p.name for p in out.iterdir()) == [f"big.tgz.part0{i}" for i in range(3)]
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["bash", str(ROOT / "scripts/device/collect.sh"), str(out)], cwd=home, check=True)
    assert (home / "runs" / "p" / "big.jsonl").read_bytes() == (run / "big.jsonl").read_bytes()


def test_cast_only_turns_adapters_to_bf16_in_place(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    (tmp_path / "run" / "a").mkdir(parents=True)
    f = tmp_path / "run" / "a" / "adapter_model.safetensors"
    save_file({"w": torch.full((2, 2), 0.5, dtype=torch.float32)}, f)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/device/ship.py"), str(tmp_path / "run"), "--cast-only"],
        check=True,
    )
    w = load_file(f)["w"]
    assert w.dtype == torch.bfloat16 and torch.equal(w.float(), torch.full((2, 2), 0.5))


def test_pack_of_chosen_stages_carries_them_once_and_unpack_restores_them(tmp_path):
    """`study.sh pack RUN DEST STAGE...` sends finished stages to a fresh machine: only those
    stages (outputs, manifests, logs), no SFT dataset a finished stage trained on (a dataset
    still to be trained on goes), identical tokenizers stored once."""
    run = tmp_path / "runs" / "study"
    big = bytes(range(256)) * 8192  # 2 MiB, incompressible enough to see a second copy
    data = f"/root/matsql/repo/runs/{run.name}/sft-data"
    for name in ("sft-a", "sft-b"):
        argv = ["train", "sft", "r.yaml", "--set", f"data.sources.0.path={data}/planner"]
        _stage(run, name, name, argv=argv)
        (run / name).mkdir()
        (run / name / "tokenizer.json").write_bytes(big)
        (run / name / "adapter_config.json").write_text("{}")
    # sft-selector has not run: its dataset must reach the next machine
    _stage(
        run,
        "sft-selector",
        "sft-selector",
        status="pending",
        argv=["train", "sft", "s.yaml", "--set", f"data.sources.0.path={data}/selector"],
    )
    _stage(run, "sft-data", "sft-data")
    (run / "sft-data" / "planner").mkdir(parents=True)
    (run / "sft-data" / "planner.jsonl").write_bytes(big)
    (run / "sft-data" / "planner" / "data.arrow").write_bytes(big)
    (run / "sft-data" / "selector").mkdir()
    (run / "sft-data" / "selector" / "data.arrow").write_text("selector rows\n")
    (run / "sft-data" / "sft_data.json").write_text("{}")
    _stage(run, "eval", "eval/rollout.jsonl")
    (run / "eval").mkdir()
    (run / "eval" / "rollout.jsonl").write_text("{}\n")
    _stage(run, "later", "later.jsonl")
    (run / "later.jsonl").write_text("not carried\n")
    dest = tmp_path / "carry"
    script = ROOT / "scripts/device/study.sh"
    subprocess.run(
        ["bash", str(script), "pack", str(run), str(dest), "sft-a", "sft-b", "sft-data", "eval"],
        check=True,
        capture_output=True,
    )
    parts = sorted(dest.glob("run.tgz.*"))
    assert parts and sum(p.stat().st_size for p in parts) < 1.5 * len(big)  # one tokenizer, no datasets
    state = tmp_path / "state"
    subprocess.run(
        ["bash", str(script), "unpack", str(dest)],
        check=True,
        capture_output=True,
        env={"MATSQL_STATE": str(state), "PATH": "/usr/bin:/bin"},
    )
    got = state / "repo" / "runs" / "study"
    for name in ("sft-a", "sft-b"):
        assert (got / name / "tokenizer.json").read_bytes() == big
        assert (got / "manifests" / f"{name}.json").exists() and (got / "logs" / f"{name}.log").exists()
    assert (got / "sft-data" / "sft_data.json").exists() and (got / "sft-data" / "planner").is_dir()
    assert not (got / "sft-data" / "planner.jsonl").exists()
    assert not (got / "sft-data" / "planner" / "data.arrow").exists()
    assert (got / "sft-data" / "selector" / "data.arrow").read_text() == "selector rows\n"
    assert (got / "eval" / "rollout.jsonl").exists()
    assert not (got / "later.jsonl").exists() and not (got / "manifests" / "later.json").exists()
    # stages that came from here are not shipped back
    assert set((got / ".shipped").read_text().split()) == {"sft-a", "sft-b", "sft-data", "eval"}


def test_pack_cuts_parts_of_part_mb_that_unpack_joins(tmp_path):
    """Beside a sparse working tree a part may be near a call's whole 64 MiB (PART_MB); the parts
    are plain cuts of one archive, so unpack joins any size."""
    import random

    run = tmp_path / "runs" / "study"
    _stage(run, "eval", "eval/rollout.jsonl")
    (run / "eval").mkdir()
    blob = random.Random(0).randbytes(3 * 2**20)  # incompressible: about 3 MiB packed
    (run / "eval" / "rollout.jsonl").write_bytes(blob)
    script = ROOT / "scripts/device/study.sh"
    sizes = {}
    for mb in ("1", "2"):
        dest = tmp_path / f"carry{mb}"
        env = {"PART_MB": mb, "PATH": "/usr/bin:/bin"}
        subprocess.run(
            ["bash", str(script), "pack", str(run), str(dest)], check=True, capture_output=True, env=env
        )
        parts = sorted(dest.glob("run.tgz.*"))
        assert all(p.stat().st_size <= int(mb) * 2**20 for p in parts)
        sizes[mb] = len(parts)
        state = tmp_path / f"state{mb}"
        subprocess.run(
            ["bash", str(script), "unpack", str(dest)],
            check=True,
            capture_output=True,
            env={"MATSQL_STATE": str(state), "PATH": "/usr/bin:/bin"},
        )
        assert (state / "repo" / "runs" / "study" / "eval" / "rollout.jsonl").read_bytes() == blob
    assert sizes == {"1": 4, "2": 2}


def test_final_ships_done_stages_and_the_shards_of_unfinished_rollouts(tmp_path):
    """The lease's last call: finished stages come home, and so do the shard files of a
    rollout still running, which resume on the next machine."""
    import shutil
    import tarfile

    state = tmp_path / "state"
    repo = state / "repo"
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    run = repo / "runs" / "study"
    _stage(run, "done-stage", "done.jsonl")
    (run / "done.jsonl").write_text("{}\n")
    _stage(run, "eval", "eval/rollout.jsonl", status="running")
    (run / "eval").mkdir()
    (run / "eval" / "rollout.jsonl.shard0").write_text("{}\n")
    (run / "eval" / "rollout.jsonl.shard1").write_text("{}\n")
    out = tmp_path / "out"
    env = {
        "MATSQL_STATE": str(state),
        "OUT": str(out),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    (state / "job.log").write_text("log\n")
    subprocess.run(
        ["bash", str(ROOT / "scripts/device/study.sh"), "final"], check=True, capture_output=True, env=env
    )
    assert (out / "done-stage.tgz").exists() and not (out / "eval.tgz").exists()
    with tarfile.open(out / "partial.tgz") as tar:
        assert sorted(tar.getnames()) == [
            "study/eval/rollout.jsonl.shard0",
            "study/eval/rollout.jsonl.shard1",
        ]


def test_handoff_keeps_a_run_in_history_not_in_the_tree_and_restores_it(tmp_path):
    """handoff.sh save: the packed run in one commit, gone from the tree in the next, the restore
    line in results/<plan>/HANDOFF.md; restore: the parts for the device and the run in runs/."""
    import os
    import shutil

    repo = tmp_path / "repo"
    (repo / "scripts" / "device").mkdir(parents=True)
    for f in ("handoff.sh", "study.sh", "ship.py"):
        shutil.copy(ROOT / "scripts" / "device" / f, repo / "scripts" / "device" / f)
    env = os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python3: this one
    }

    def sh(*args: str) -> str:
        return subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    sh("git", "init", "-q", "-b", "main")
    (repo / ".gitignore").write_text("/runs/\n/.carry/\n")
    sh("git", "add", ".")
    sh("git", "commit", "-qm", "init")
    run = repo / "runs" / "study"
    (run / "sft-x").mkdir(parents=True)
    (run / "sft-x" / "adapter_config.json").write_text('{"r": 8}')
    (run / "roll.jsonl").write_text('{"q": 1}\n')
    _stage(run, "sft-x", "sft-x")
    _stage(run, "roll", "roll.jsonl")
    _stage(run, "later", "later.jsonl", status="running")
    before = sh("git", "rev-parse", "HEAD").strip()

    out = sh("bash", "scripts/device/handoff.sh", "save", "runs/study")
    commits = sh("git", "rev-list", f"{before}..HEAD").split()
    assert len(commits) == 2
    saved = commits[1]  # rev-list lists newest first
    assert f"restore {saved}" in out
    assert sh("git", "ls-files", "handoff") == ""  # not in the tree ...
    assert "handoff/study/run.tgz.00" in sh(
        "git", "show", "--name-only", "--format=", saved
    )  # ... in history
    log = (repo / "results" / "study" / "HANDOFF.md").read_text()
    assert f"handoff.sh restore {saved}`" in log and "2 finished stage(s)" in log
    assert sh("git", "status", "--porcelain") == ""

    shutil.rmtree(repo / "runs")
    sh("bash", "scripts/device/handoff.sh", "restore", saved)
    got = repo / "runs" / "study"
    assert (got / "roll.jsonl").read_text() == '{"q": 1}\n'
    assert json.loads((got / "sft-x" / "adapter_config.json").read_text()) == {"r": 8}
    assert (got / "manifests" / "later.json").exists()  # the whole folder, unfinished stages too
    assert sorted(p.name for p in (repo / ".carry" / "run").iterdir()) == ["run.tgz.00"]

    def refused(commit: str) -> str:
        res = subprocess.run(
            ["bash", "scripts/device/handoff.sh", "restore", commit],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode != 0
        return res.stderr

    assert "no single handoff" in refused(before)
    removal = commits[0]  # the commit that took the parts out of the tree names them too
    assert "its parent holds them" in refused(removal)

    # named stages (a study's final adapters): only they travel, and the commit and the restore
    # line name them instead of counting the run's finished stages
    last = sh("git", "rev-parse", "HEAD").strip()
    sh("bash", "scripts/device/handoff.sh", "save", "runs/study", "sft-x")
    named = sh("git", "rev-list", f"{last}..HEAD").split()[1]
    assert "1 named stage(s): sft-x" in sh("git", "log", "-1", "--format=%s", named)
    assert (
        "1 named stage(s): sft-x, "
        in (repo / "results" / "study" / "HANDOFF.md").read_text().splitlines()[-1]
    )
    shutil.rmtree(repo / "runs")
    sh("bash", "scripts/device/handoff.sh", "restore", named)
    assert json.loads((got / "sft-x" / "adapter_config.json").read_text()) == {"r": 8}
    assert not (got / "roll.jsonl").exists()


def test_chain_runs_the_checks_then_the_rule_then_the_plan_with_its_slots(tmp_path):
    """chain.sh: the checks first, then the rule file (here: ORPO's peak from the checks'
    train.json), then study.sh start with the rule's --gpu-slots and the options as given."""
    import shutil
    import time

    snap, state = tmp_path / "snap", tmp_path / "state"
    (snap / "scripts" / "device" / "rules").mkdir(parents=True)
    state.mkdir()
    for f in ("chain.sh", "rules/orpo_slots.sh"):
        shutil.copy(ROOT / "scripts" / "device" / f, snap / "scripts" / "device" / f)
    # a stand-in for study.sh that records how it was called
    (snap / "scripts/device/study.sh").write_text('echo "study $*" >> "$MATSQL_STATE/calls"\n')

    def chain(peak: float) -> list[str]:
        # a stand-in for the checks: records its call, writes ORPO's peak where train writes it
        (snap / "scripts/device/vllm_checks.sh").write_text(
            'mkdir -p "$1"; echo "checks $*" >> "$MATSQL_STATE/calls"\n'
            f'echo \'{{"methods": {{"orpo": {{"variants": {{"committed": '
            f'{{"peak_gpu_memory_gib": {peak}}}}}}}}}}}\' > "$1/train.json"\n'
        )
        calls = state / "calls"
        calls.unlink(missing_ok=True)
        subprocess.run(
            ["bash", "scripts/device/chain.sh", "start", str(tmp_path / "checks"), "train",
             "scripts/device/rules/orpo_slots.sh", "experiments/p.yaml", "--jobs", "4", "--prefer", "a b"],
            cwd=snap, check=True, capture_output=True, env={"MATSQL_STATE": str(state), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        for _ in range(100):  # the chain runs detached
            if calls.exists() and "study" in calls.read_text():
                break
            time.sleep(0.1)
        return calls.read_text().splitlines()

    calls = chain(31.5)
    assert calls[0] == f"checks {tmp_path / 'checks'} train"
    assert calls[1] == "study start experiments/p.yaml --jobs 4 --prefer a b --gpu-slots 4"
    assert "peak 31.5 GiB -> --gpu-slots 4" in (state / "chain.log").read_text()
    assert chain(44.6)[1].endswith("--gpu-slots 2")


def _pick_dir(run: Path, arm: str, ba: float, lr: str) -> None:
    """The two stages of one arm as the ORPO LR rule reads them: a pick and its ORPO run."""
    pick = run / f"pick-iter1-val-sel-{arm}"
    pick.mkdir(parents=True, exist_ok=True)
    rates = {"balanced_accuracy": ba, "catch_rate": 0.8, "false_alarm_rate": 0.3}
    (pick / "pick.json").write_text(
        json.dumps({"chosen": "checkpoint-40", "scores": {"checkpoint-40": {"rates": rates}}})
    )
    orpo = run / f"orpo-iter1-val-sel-{arm}"
    orpo.mkdir(parents=True, exist_ok=True)
    metrics = {
        w: {"eval_rewards/accuracies": 0.6, "eval_rewards/margins": 0.004, "eval_loss": 0.24}
        for w in ("eval_before", "eval")
    }
    (orpo / "run.json").write_text(json.dumps({"metrics": metrics}))
    (orpo / "recipe.yaml").write_text(f"trainer:\n  learning_rate: {lr}\n")
    for s in (pick.name, orpo.name):
        _stage(run, s, s)


def test_orpo_lr_check_reruns_the_four_stages_in_a_copy_then_adopts_or_keeps_by_its_rule(tmp_path):
    """orpo_lr_check.sh: the iter1 val-sel ORPO runs and picks again in a copy of the run folder at
    the new learning rate (a stand-in for the runner writes their picks), the rule, then
    study.sh start; with the override and the four stages moved in only if the rule adopts."""
    import shutil
    import time

    def check(new_ba: dict[str, float], env: dict[str, str] | None = None) -> tuple[list[str], Path, dict]:
        snap, state = tmp_path / "snap", tmp_path / "state"
        shutil.rmtree(snap, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        for d in ("scripts/device/rules", "src/matsql/experiment", "experiments", "recipes", "benchmarks"):
            (snap / d).mkdir(parents=True)
        (snap / "pyproject.toml").write_text("")
        for f in ("orpo_lr_check.sh", "orpo_lr_rule.py", "beside_stages.py", "rules/card_slots.sh"):
            shutil.copy(ROOT / "scripts" / "device" / f, snap / "scripts" / "device" / f)
        (snap / "scripts/device/env.sh").write_text("export PYTHONPATH=$PWD/src\n")
        (snap / "scripts/device/study.sh").write_text('echo "study $*" >> "$MATSQL_STATE/calls"\n')
        # a stand-in plan graph for beside_stages.py: eval-planner-trn-s0 needs no ORPO run,
        # rollout-iter2-collab does (through its pick)
        (snap / "src/matsql/experiment/__init__.py").write_text("")
        (snap / "src/matsql/experiment/plan.py").write_text(
            "class PlanError(ValueError): pass\n"
            "G = {'sft-planner': [], 'eval-planner-trn-s0': ['sft-planner'], 'ref-sft-val-sel': [],\n"
            "     'orpo-iter1-val-cond-collab': [], 'pick-iter1-val-cond-collab': ['orpo-iter1-val-cond-collab'],\n"
            "     'rollout-iter2-collab': ['pick-iter1-val-cond-collab']}\n"
            "class Plan:\n"
            "    def ancestors(self, n):\n"
            "        return [a for d in G[n] for a in self.ancestors(d)] + [n]\n"
            "def load_plan(path):\n"
            "    return Plan()\n"
        )
        # a stand-in for the runner: records its argv; the check's run (the one given a run_dir)
        # writes the rerun stages at new_ba; a run beside it takes a second, then says it ended
        (snap / "src/matsql/__init__.py").write_text("")
        (snap / "src/matsql/cli.py").write_text(
            "import json, os, sys, time\n"
            "from pathlib import Path\n"
            "a = sys.argv[1:]\n"
            "calls = os.environ['MATSQL_STATE'] + '/calls'\n"
            "open(calls, 'a').write('run ' + ' '.join(a) + '\\n')\n"
            "if not any(x.startswith('run_dir=') for x in a):\n"
            "    time.sleep(1); open(calls, 'a').write('beside ended\\n'); sys.exit(0)\n"
            "run = Path(next(x for x in a if x.startswith('run_dir=')).split('=', 1)[1])\n"
            f"for arm, ba in {new_ba!r}.items():\n"
            "    p = run / f'pick-iter1-val-sel-{arm}'; o = run / f'orpo-iter1-val-sel-{arm}'\n"
            "    p.mkdir(parents=True); o.mkdir(parents=True)\n"
            "    r = {'balanced_accuracy': ba, 'catch_rate': 0.8, 'false_alarm_rate': 0.3}\n"
            "    (p / 'pick.json').write_text(json.dumps({'chosen': 'checkpoint-40', 'scores': {'checkpoint-40': {'rates': r}}}))\n"
            "    (o / 'run.json').write_text(json.dumps({'metrics': {}}))\n"
            "    (o / 'recipe.yaml').write_text('trainer:\\n  learning_rate: 2.0e-4\\n')\n"
            "    for st in (p, o):\n"
            "        (run / 'manifests' / f'{st.name}.json').write_text(json.dumps({'status': 'done', 'out': str(st.resolve())}))\n"
        )
        run = state / "repo" / "runs" / "p"
        for arm, ba in (("collab", 0.736), ("indep", 0.800)):
            _pick_dir(run, arm, ba, "5.0e-05")
        (run / ".shipped").write_text("orpo-iter1-val-sel-collab\npick-iter1-val-sel-collab\nsft-val-sel\n")
        calls = state / "calls"
        subprocess.run(
            ["bash", "scripts/device/orpo_lr_check.sh", "start", "experiments/p.yaml", "2.0e-4", "--jobs", "4"],
            cwd=snap, check=True, capture_output=True,
            env={"MATSQL_STATE": str(state), "PATH": "/usr/bin:/bin", "TESTS": str(ROOT / "tests")} | (env or {}),
        )  # fmt: skip
        for _ in range(300):  # it runs detached
            if calls.exists() and "study" in calls.read_text():
                break
            time.sleep(0.1)
        return calls.read_text().splitlines(), run, json.loads((state / "lr-decision.json").read_text())

    h100 = "--gpu-slots 2 --set vars.train_slots=8"  # no nvidia-smi here: the rule's H100 branch

    calls, run, decision = check({"collab": 0.75, "indep": 0.81})  # mean +0.012: adopted
    assert calls[0].startswith(
        f"run experiment run experiments/p.yaml --set run_dir={tmp_path / 'state' / 'lrcheck'}"
    )
    assert (
        "--set vars.orpo_extra=--set trainer.learning_rate=2.0e-4 --until pick-iter1-val-sel-indep"
        in calls[0]
    )
    assert calls[0].endswith(f"--until pick-iter1-val-sel-indep --jobs 2 {h100}")
    assert (
        calls[1]
        == f"study start experiments/p.yaml --jobs 4 --set vars.orpo_extra=--set trainer.learning_rate=2.0e-4 {h100}"
    )
    assert decision["adopt"] and decision["new_lr"]["pairs"]["indep"]["learning_rate"] == "2.0e-4"
    pick = json.loads((run / "pick-iter1-val-sel-indep" / "pick.json").read_text())
    assert pick["scores"]["checkpoint-40"]["rates"]["balanced_accuracy"] == 0.81  # moved in
    old = json.loads((run.parent / "lr-replaced" / "pick-iter1-val-sel-indep" / "pick.json").read_text())
    assert old["scores"]["checkpoint-40"]["rates"]["balanced_accuracy"] == 0.8
    assert (run / ".shipped").read_text().split() == ["sft-val-sel"]  # the moved stages ship home
    man = json.loads((run / "manifests" / "pick-iter1-val-sel-indep.json").read_text())
    assert man["out"] == str((run / "pick-iter1-val-sel-indep").resolve())  # where ship.py looks

    calls, run, decision = check({"collab": 0.74, "indep": 0.81})  # mean +0.007: kept
    assert calls[1] == f"study start experiments/p.yaml --jobs 4 {h100}" and not decision["adopt"]
    pick = json.loads((run / "pick-iter1-val-sel-indep" / "pick.json").read_text())
    assert pick["scores"]["checkpoint-40"]["rates"]["balanced_accuracy"] == 0.8
    assert not (run.parent / "lr-replaced").exists()
    # a poll brings the decision, the log and the check's own picks home, in one file (a call
    # returns at most 8: the poll's study.sh wait ships 7)
    out = tmp_path / "out"
    subprocess.run(
        ["bash", "scripts/device/orpo_lr_check.sh", "ship", str(out)],
        cwd=tmp_path / "snap", check=True, capture_output=True,
        env={"MATSQL_STATE": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    import tarfile

    assert [p.name for p in out.iterdir()] == ["lrcheck.tgz"]
    with tarfile.open(out / "lrcheck.tgz") as t:
        names = set(t.getnames())
        assert json.load(t.extractfile("lr-decision.json"))["adopt"] is False
    assert {"lrcheck.log", "lrcheck/pick-iter1-val-sel-indep/pick.json"} <= names
    assert "lrcheck/orpo-iter1-val-sel-collab/run.json" in names and "beside.log" not in names

    # a card of 120 GiB or more (an H200): four slots, training on half the card, and the stages
    # that need no ORPO run beside the check, in the plan's run folder; the plan starts after both
    h200 = "--gpu-slots 4 --set vars.train_slots=2"
    big = {"CARD_MIB": "143771", "BESIDE": "ref-sft-val-sel,eval-planner-trn-s0"}
    calls, run, decision = check({"collab": 0.74, "indep": 0.81}, big)
    beside = [c for c in calls if c.startswith("run") and "run_dir=" not in c]
    assert beside == [
        f"run experiment run experiments/p.yaml --until ref-sft-val-sel,eval-planner-trn-s0 --jobs 1 --keep-going {h200}"
    ]
    checked = [c for c in calls if "run_dir=" in c]
    assert len(checked) == 1 and checked[0].endswith(f"--jobs 2 {h200}")
    assert (
        calls.index("beside ended") < len(calls) - 1
        and calls[-1] == f"study start experiments/p.yaml --jobs 4 {h200}"
    )
    # a stage that needs an ORPO run (whose learning rate the check decides) never runs beside it
    calls, _, _ = check(
        {"collab": 0.74, "indep": 0.81}, big | {"BESIDE": "eval-planner-trn-s0,rollout-iter2-collab"}
    )
    assert [c for c in calls if "run_dir=" not in c and c.startswith("run")] == []
    log = (tmp_path / "state" / "lrcheck.log").read_text()
    assert "rollout-iter2-collab needs orpo-iter1-val-cond-collab" in log and calls[-1].endswith(h200)
    # RUN_OPTS (shell-quoted plan overrides) reach every runner: beside it, the check, the plan
    opts = {"RUN_OPTS": "--set 'vars.agents=my agents.yaml'"}
    calls, _, _ = check({"collab": 0.74, "indep": 0.81}, big | opts)
    assert [c for c in calls if c.startswith(("run", "study"))] == [
        c for c in calls if "vars.agents=my agents.yaml" in c
    ]
    assert len([c for c in calls if c.startswith(("run", "study"))]) == 3
    # on an H100 the list is ignored: the check has the card to itself
    calls, _, _ = check(
        {"collab": 0.74, "indep": 0.81}, {"CARD_MIB": "81559", "BESIDE": "eval-planner-trn-s0"}
    )
    assert len(calls) == 2 and calls[-1].endswith(h100)
    assert "the card is under 120 GiB" in (tmp_path / "state" / "lrcheck.log").read_text()


def test_orpo_lr_rule_is_symmetric_in_the_arms_and_needs_both():
    spec = importlib.util.spec_from_file_location("orpo_lr_rule", ROOT / "scripts/device/orpo_lr_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    old = {"collab": 0.70, "indep": 0.80}
    assert rule.decide(old, {"collab": 0.73, "indep": 0.80})  # +0.015 on the mean: adopted
    assert not rule.decide(old, {"collab": 0.71, "indep": 0.80})  # +0.005: kept
    assert rule.decide(old, {"collab": 0.70, "indep": 0.83}) == rule.decide(
        old, {"collab": 0.73, "indep": 0.80}
    )
    assert not rule.decide(old, {"collab": 0.75, "indep": 0.74})  # one arm's gain, the other's loss
    with pytest.raises(ValueError, match="arms differ"):
        rule.decide(old, {"collab": 0.9})


def test_beside_stages_on_the_v2_plan_refuses_what_reaches_an_orpo_run(capsys):
    """The stages lease 3 runs beside the learning-rate check need no ORPO run, in the committed
    plan; a stage that reaches one through its inputs is refused, naming the ORPO run."""
    spec = importlib.util.spec_from_file_location("beside_stages", ROOT / "scripts/device/beside_stages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    plan = str(ROOT / "experiments/study-spider-v2.yaml")
    ok = "ref-sft-val-sel,ref-sft-val-cond,eval-planner-trn-s0,eval-planner-trn-s1,eval-planner-trn-s2,eval-sft-dev-s0"
    assert mod.main([plan, ok]) == 0 and capsys.readouterr().out.strip() == ok
    assert mod.main([plan, "eval-planner-trn-s0,eval-collab-dev-s0"]) == 1
    assert "eval-collab-dev-s0 needs orpo-" in capsys.readouterr().err
    assert mod.main([plan, "orpo-iter1-val-cond-indep"]) == 1
    assert mod.main([plan, "no-such-stage"]) == 1 and "no stage 'no-such-stage'" in capsys.readouterr().err
