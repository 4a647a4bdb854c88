"""Stage hashes count paths relative to the plan's folders, so a run folder carried between
machines whose checkouts sit at different absolute paths (here and the lent GPU's
/root/matsql/repo) keeps its finished stages fresh; a named file still counts by its content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from matsql.experiment.manifest import manifest_path, portable_text
from matsql.experiment.plan import load_plan
from matsql.experiment.runner import plan_hashes, run_plan, stage_report

PLAN = """
name: carried
run_dir: runs/carried
vars:
  agents: ${base_dir}/agents.yaml
  outside: OUTSIDE
stages:
  roll:
    cmd: rollout --benchmark minibench --agents ${vars.agents} --adapter planner=${base_dir}/adapters/p --out ${out}
    out: ${run_dir}/roll.jsonl
  labels:
    needs: [roll]
    cmd: labels build --agent val-sel --rollouts ${stages.roll.out} --extra ${vars.outside} --out ${out}
  compare:
    needs: [labels, roll]
    cmd: compare ${stages.roll.out},${run_dir}/labels ${stages.labels.out} --out ${out}
"""


class Touch:
    """Writes each stage's output instead of running matsql."""

    def run(self, stage, log, on_start=None) -> None:
        Path(stage.out).parent.mkdir(parents=True, exist_ok=True)
        Path(stage.out).write_text(" ".join(stage.argv))


def _checkout(root: Path, outside: Path) -> Path:
    root.mkdir(parents=True)
    (root / "plan.yaml").write_text(PLAN.replace("OUTSIDE", str(outside)), encoding="utf-8")
    (root / "agents.yaml").write_text("agents:\n  planner: {backend: echo}\n", encoding="utf-8")
    (root / "adapters" / "p").mkdir(parents=True)
    return root


def _load(root: Path):
    return load_plan(root / "plan.yaml", base_dir=root)


def test_a_carried_run_folder_keeps_its_stages_fresh(tmp_path: Path) -> None:
    outside = tmp_path / "shared.txt"  # a file outside both checkouts: counts as named
    outside.write_text("x")
    here = _checkout(tmp_path / "work" / "main", outside)
    there = tmp_path / "root" / "matsql" / "repo"
    plan_here = _load(here)
    assert str(here) in " ".join(plan_here.stages["roll"].argv)  # commands keep real paths
    run_plan(plan_here, Touch())
    assert {s for s, _ in stage_report(plan_here).values()} == {"done"}

    shutil.copytree(here, there)  # the checkout with its run folder, at another absolute path
    plan_there = _load(there)
    assert plan_hashes(plan_there)[0] == plan_hashes(plan_here)[0]
    assert {n: s for n, (s, _) in stage_report(plan_there).items()} == dict.fromkeys(
        plan_there.stages, "done"
    )
    parts = plan_hashes(plan_there)[1]
    assert "--agents" in parts["roll"]["argv"] and "<base_dir>/agents.yaml" in parts["roll"]["argv"]
    assert "planner=<base_dir>/adapters/p" in parts["roll"]["argv"]
    assert "<run_dir>/roll.jsonl,<run_dir>/labels" in parts["compare"]["argv"]
    assert set(parts["roll"]["files"]) == {"<base_dir>/agents.yaml"}
    assert set(parts["labels"]["files"]) == {str(outside)}  # outside the plan's folders: as it is

    # a file still counts by its content: an edit there makes the stages that name it stale
    (there / "agents.yaml").write_text("agents:\n  planner: {backend: echo, temperature: 0.5}\n")
    report = stage_report(_load(there))
    assert report["roll"] == ("stale", ["<base_dir>/agents.yaml changed"])
    assert report["labels"][0] == "stale" and report["compare"][0] == "stale"
    assert stage_report(plan_here)["roll"][0] == "done"  # the original is untouched


def test_a_manifest_with_absolute_paths_is_stale_once_and_says_why(tmp_path: Path) -> None:
    outside = tmp_path / "shared.txt"
    outside.write_text("x")
    root = _checkout(tmp_path / "repo", outside)
    plan = _load(root)
    run_plan(plan, Touch())
    m = manifest_path(plan.run_dir, "roll")
    data = json.loads(m.read_text())
    data["parts"]["argv"] = plan.stages["roll"].argv  # as an older matsql wrote it
    data["hash"] = "0123456789abcdef"
    m.write_text(json.dumps(data))
    status, why = stage_report(plan)["roll"]
    assert status == "stale" and why == [
        "its manifest predates paths relative to the plan's folders (written by an older matsql)"
    ]


def test_portable_text_replaces_whole_path_components_only(tmp_path: Path) -> None:
    roots = [("run_dir", Path("/w/main/runs/x")), ("base_dir", Path("/w/main"))]
    assert portable_text("/w/main/runs/x/a.jsonl", roots) == "<run_dir>/a.jsonl"
    assert portable_text("val-sel=/w/main/a,/w/main/runs/x", roots) == "val-sel=<base_dir>/a,<run_dir>"
    assert portable_text("/w/main/runs/xy/z", roots) == "<base_dir>/runs/xy/z"
    for other in ("/w/main2/a", "/x/w/main/a", "w/main/a"):
        assert portable_text(other, roots) == other
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real").mkdir()
    assert portable_text(f"{tmp_path / 'real'}/f", [("base_dir", link)]) == "<base_dir>/f"  # resolved form
