"""The committed study plan still describes the committed study: each rollout stage of
experiments/study-spider.yaml, parsed as `matsql rollout` parses it (`config_from_argv`), hashes to
the config hash in the header of its committed file under results/study-spider.

The committed runs were made on the lent machine from /root/matsql/repo, when headers recorded
absolute paths: those (adapters, --planner-from) are read relative to the checkout, as `matsql
rollout` now records paths inside its working directory, and the team digest is recomputed from
the header's agents with those paths, as `Team.digest` computes it. The plan's commands are parsed
from the checkout's root, as `experiment run` runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from matsql.experiment.plan import load_plan
from matsql.rollout.commands import config_from_argv
from matsql.rollout.config import RolloutConfig
from matsql.rollout.io import read_header

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "study-spider.yaml"
RESULTS = ROOT / "results" / "study-spider"
DEVICE_ROOT = "/root/matsql/repo"  # where the committed study ran (its headers' paths)


def _here(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(DEVICE_ROOT + "/", "")
    if isinstance(value, dict):
        return {k: _here(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_here(v) for v in value]
    return value


def _header_config_here(path: Path) -> RolloutConfig:
    """The header's config as if the study had run from this checkout."""
    header = read_header(path)
    assert header is not None, path
    # the header's own hash first: the fields below are what it was computed from
    fields = {k: v for k, v in header.config.items() if k in RolloutConfig.model_fields}
    assert RolloutConfig(**fields).digest() == header.config_hash, path
    config = _here(header.config)
    agents = {
        name: {f: x for f, x in spec.items() if f != "weights"}
        for name, spec in sorted(config["agents"].items())
    }
    team = hashlib.sha256(json.dumps(agents, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return RolloutConfig(
        **{k: v for k, v in config.items() if k in RolloutConfig.model_fields} | {"team_digest": team}
    )


def test_the_study_plans_rollout_commands_hash_as_the_committed_headers(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    plan = load_plan(STUDY, base_dir=ROOT)
    checked, sampled = 0, []
    for name, stage in plan.stages.items():
        if stage.kind != "rollout":
            continue
        committed = RESULTS / f"{Path(stage.out).relative_to(plan.run_dir)}.gz"
        if not committed.exists():  # rollout-sft: its records were not committed
            continue
        got = config_from_argv(stage.argv)
        want = _header_config_here(committed)
        assert got.digest() == want.digest(), (name, got.model_dump(), want.model_dump())
        checked += 1
        if got.temperature > 0 and got.planner_from is None:
            sampled.append(name)
    assert checked >= 13, checked
    # the stages that sample planner candidates: they hash as the committed ones only with
    # --greedy-first, now that all-sampled is the default
    assert sampled == [
        "rollout-iter1",
        "rollout-iter2-collab",
        "rollout-iter2-indep",
        "rollout-iter2-joint",
        "eval-planner",
    ]
    stage = plan.stages["rollout-iter1"]
    without = [a for a in stage.argv if a != "--greedy-first"]
    assert without != stage.argv
    want = _header_config_here(RESULTS / "rollout-iter1.jsonl.gz")
    assert config_from_argv(without).digest() != want.digest()


def test_config_from_argv_reads_the_commands_options(tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text("agents:\n  planner: {backend: echo}\n  val-sel: {backend: echo}\n", encoding="utf-8")
    argv = ["rollout", "--benchmark", "minibench", "--agents", str(agents), "--k", "3", "--greedy-first"]
    cfg = config_from_argv([*argv, "--parts", "a=2", "--part", "a", "--out", str(tmp_path / "r.jsonl")])
    assert (cfg.benchmark, cfg.k, cfg.greedy_first, cfg.temperature, cfg.part) == (
        "minibench",
        3,
        True,
        1.0,
        "a",
    )
    assert config_from_argv([*argv[1:], "--out", "x"]).digest() == cfg.digest()  # parts: not in the hash
    adapted = config_from_argv([*argv, "--adapter", "planner=/a", "--out", "x"])
    assert adapted.team_digest != cfg.team_digest
    with pytest.raises(ValueError, match="not a rollout command line"):
        config_from_argv(["--benchmark", "minibench", "--out", "x"])  # no --agents


def test_paths_inside_the_working_directory_hash_as_relative_ones(tmp_path: Path, monkeypatch) -> None:
    """A plan passes absolute paths; inside the working directory the header records them relative
    to it, so the run hashes alike from any checkout location and its header names no machine root.
    Paths outside it stay as given (a relative form would point elsewhere)."""
    agents = tmp_path / "agents.yaml"
    agents.write_text("agents:\n  planner: {backend: echo}\n  val-sel: {backend: echo}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    base = ["rollout", "--benchmark", "minibench", "--agents", str(agents), "--out", "x"]

    def cfg(adapter: str, planner: str):
        return config_from_argv([*base, "--adapter", f"val-sel={adapter}", "--planner-from", planner])

    absolute = cfg(str(tmp_path / "runs" / "sft-val-sel"), str(tmp_path / "runs" / "p.jsonl"))
    relative = cfg("runs/sft-val-sel", "runs/p.jsonl")
    assert absolute.planner_from == "runs/p.jsonl"
    assert absolute.digest() == relative.digest() and absolute.team_digest == relative.team_digest
    outside = cfg("/elsewhere/sft-val-sel", "/elsewhere/p.jsonl")
    assert outside.planner_from == "/elsewhere/p.jsonl" and outside.team_digest != relative.team_digest
    with pytest.raises(ValueError, match="AGENT=PATH"):
        config_from_argv([*base, "--adapter", "val-sel"])  # still refused, not read as no adapter
