"""The plan language: a pydantic schema (errors name file, line and stage), OmegaConf references,
typed stages; committed plans resolve to the same stages and commands as before the rewrite."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from matsql.experiment.plan import PlanError, _Scope, load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "study-spider.yaml"
ITER2 = ROOT / "src" / "matsql" / "experiment" / "plans" / "iter2.yaml"
GOLDEN = Path(__file__).parent / "fixtures" / "experiment" / "resolved-plans.json"


def resolution(plan) -> dict[str, str]:
    """stage -> digest of what the runner takes from it (argv, out, needs, arm, resources), the
    checkout's path written as <root>. Resources are compared as text: the old plan reader kept
    them as strings, the schema types them."""
    out = {}
    for name, s in plan.stages.items():
        part = [s.argv, s.out, s.needs, s.arm, {k: str(v) for k, v in s.resources.items()}]
        text = json.dumps(part, sort_keys=True).replace(str(ROOT), "<root>")
        out[name] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


GOLDEN_CASES = {  # name -> (plan, --set overrides)
    "study-spider": (STUDY, {}),
    "study-spider --set": (
        STUDY,
        {"vars.agents": "experiments/agents/vllm-cluster.yaml", "vars.sft_opts": "--set trainer.max_steps=7"},
    ),
    "iter2": (ITER2, {}),
}


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_committed_plans_resolve_to_the_commands_they_had(case):
    """Digests written by the plan reader that this schema replaced (commit eeea25d), on these
    files. A stage listed here changed its command, output, inputs or resources: if the plan was
    edited on purpose, rewrite the fixture (see its "how" key); the study's finished stages go
    stale when their commands change."""
    path, sets = GOLDEN_CASES[case]
    want = json.loads(GOLDEN.read_text())["plans"][case]
    got = resolution(load_plan(path, overrides=sets, base_dir=ROOT))
    assert list(got) == list(want), "stage names or order changed"
    assert [n for n in got if got[n] != want[n]] == []


def test_the_study_resolves_every_reference_form_it_uses():
    plan = load_plan(STUDY, overrides={"vars.sft_opts": "--set trainer.max_steps=7"}, base_dir=ROOT)
    run = ROOT / "runs" / "study-spider"
    assert plan.run_dir == run and plan.arms == ["collab", "indep", "joint"] and len(plan.stages) == 53
    # ${base_dir} in a var (from the extended iter2.yaml), ${out}, ${stages.X.out}, a var holding
    # several options (split), an override's value
    sft = plan.stages["sft-planner"]
    assert sft.argv == [
        "train", "sft", f"{ROOT}/recipes/qwen0.5b/sft-planner.v1.yaml",
        "--set", f"output_dir={run}/sft-planner",
        "--set", f"data.sources.0.path={run}/sft-data/planner",
        "--set", f"data.eval_sources.0.path={run}/sft-data/planner",
        "--set", "trainer.eval_steps=60", "--set", "peft.r=8", "--set", "peft.alpha=16",
        "--set", "trainer.max_steps=7",
    ]  # fmt: skip
    assert sft.out == f"{run}/sft-planner" and sft.needs == ["sft-data"]
    assert sft.resources == {"slots": 2, "gpus": 1} and sft.kind == "train"
    # foreach: ${arm} in the name, in needs and inside a key (${stages.orpo-...-${arm}.out}); ${arm.X}
    r2 = plan.stages["rollout-iter2-indep"]
    assert r2.arm == "indep" and r2.out == f"{run}/rollout-iter2-indep.jsonl"
    assert r2.needs == ["orpo-iter1-val-sel-indep", "orpo-iter1-val-cond-indep", "fixer-e1"]
    assert f"val-sel={run}/orpo-iter1-val-sel-indep" in r2.argv
    assert r2.resources == {"shards": 4, "gpus": 1}  # ${vars.shards}, typed once resolved
    orpo = plan.stages["orpo-iter1-val-sel-indep"]
    assert f"data.sources.0.path={run}/labels-iter1-val-sel/independent/pairs" in orpo.argv
    # a quoted empty argument stays one argument; the first rollouts get shards_first
    planner = plan.stages["eval-planner"]
    i = planner.argv.index("--validators")
    assert planner.argv[i + 1] == "" and planner.resources["shards"] == 8
    assert plan.stages["select-joint"].check == {"role": "select"}
    assert plan.vars["agents"] == f"{ROOT}/experiments/agents/qwen0.5b-local.yaml"  # resolved


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_typo_names_the_file_the_line_and_the_stage(tmp_path):
    plan = _write(
        tmp_path / "p.yaml",
        "name: p\nstages:\n  a:\n    cmd: touch ${out}\n  b:\n    cmd: touch ${out}\n    need: [a]\n",
    )
    with pytest.raises(PlanError) as e:
        load_plan(plan)
    assert str(e.value) == f"{plan}:7: stage b: unknown key 'need' (did you mean 'needs'?)"
    # in the plan a child extends: the parent's file and line
    _write(tmp_path / "child.yaml", "extends: p.yaml\nvars: {k: 1}\n")
    with pytest.raises(PlanError, match=rf"^{tmp_path / 'p.yaml'}:7: stage b: unknown key 'need'"):
        load_plan(tmp_path / "child.yaml")
    # a reference that is not there: the stage and the field
    bad = _write(tmp_path / "r.yaml", "name: r\nstages:\n  a:\n    cmd: touch ${vars.nope}\n")
    with pytest.raises(PlanError, match=rf"^{bad}:4: stage a: cmd: unknown reference \$\{{vars.nope\}}$"):
        load_plan(bad)
    # a resource that is not a number once resolved
    res = _write(
        tmp_path / "s.yaml",
        "name: s\nvars: {n: four}\nstages:\n  a:\n    cmd: x\n    resources: {shards: '${vars.n}'}\n",
    )
    with pytest.raises(PlanError, match=rf"^{res}:6: stage a: resources: shards: .*integer.*'four'"):
        load_plan(res)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stages": {"a": {"cmd": "x", "foreach": "arms"}}}, "stage a: foreach must be 'arm', got 'arms'"),
        ({"stages": {"a": {"cmd": "x", "foreach": "arm"}}}, "stage a: foreach: arm but the plan has no arms"),
        ({"stages": {"a": {"out": "o"}}}, "stage a: the stage has no cmd"),
        ({"stages": {"a": {"cmd": "x ${vars}"}}, "vars": {"k": 1}}, r"stage a: cmd: \$\{vars\} is a mapping"),
        ({"stages": {"a": {"cmd": "x ${arm}"}}}, r"stage a: cmd: unknown reference \$\{arm\}"),
        ({"stages": {"a": {"cmd": "x"}}, "vars": {"k": [1]}}, "vars.k: Input should be a valid string"),
        ({"stages": {"a": {"cmd": "x ${vars.k}"}}, "vars": {"k": "???"}}, r"vars.k: a value is \?\?\?"),
        ({"stages": {"a": {"cmd": "x"}}, "vars": {"a": "${vars.b}", "b": "${vars.a}"}}, "vars.a: Recursive"),
        ({"stages": {"a": {"cmd": "x"}}, "primary": {"stag": "a"}}, "primary: unknown key 'stag'"),
        ({"stages": {"a": {"cmd": "x"}}, "primary": {"stage": "a"}}, "primary: stage 'a' runs `matsql x`"),
        ({"stages": {"a": {"cmd": "x"}}, "primary": {"stage": "b"}}, "primary: stage 'b' is not a stage"),
    ],
)
def test_bad_plans_say_what_is_wrong(raw, message):
    with pytest.raises(PlanError, match=f"^p.yaml: {message}"):
        parse_plan({"name": "p", **raw}, source="p.yaml")


def test_references_are_omegaconf_interpolations(tmp_path):
    raw = {
        "name": "p",
        "run_dir": "${base_dir}/${vars.where}",
        "vars": {
            "where": "${vars.sub}/run",
            "sub": "out",
            "k": 8,
            "t": 1.0,
            "flag": True,
            "opts": "--a 1 --b",
        },
        "arms": {"x": {"mode": "m-${vars.sub}"}, "y": {"mode": "plain"}},
        "env": {"K": "${vars.k}", "N": 3},
        "slurm": {"account": "${name}-acct", "nodes": 1},
        "stages": {
            "lit": {"cmd": ["echo", "\\${not.a.ref}", "${vars.k}", 4]},  # escape; list items
            "s-${arm}": {
                "foreach": "arm",
                "cmd": "run --mode ${arm.mode} --k ${vars.k} --t ${vars.t} --f ${vars.flag} ${vars.opts} --out ${out}",
                "out": "${run_dir}/${arm}.txt",
                "resources": {
                    "shards": "${vars.k}",
                    "mem_gb": "${vars.t}",
                    "slurm": {"qos": "q-${arm.mode}"},
                },
            },
            "after": {"needs": ["s-x", "s-y"], "cmd": "cat ${stages.s-x.out} ${stages.s-y.out}"},
        },
    }
    plan = parse_plan(raw, source="p.yaml", base_dir=tmp_path, overrides={"vars.sub": "${name}-sub"})
    run = tmp_path / "p-sub" / "run"  # vars may refer to later vars; an override holds references
    assert plan.run_dir == run and plan.vars["where"] == "p-sub/run" and plan.vars["k"] == 8
    assert plan.stages["lit"].argv == ["echo", "${not.a.ref}", "8", "4"]
    sx = plan.stages["s-x"]
    assert sx.argv == ["run", "--mode", "m-p-sub", "--k", "8", "--t", "1.0", "--f", "True", "--a", "1", "--b",
                       "--out", f"{run}/x.txt"]  # fmt: skip
    assert sx.resources == {"shards": 8, "mem_gb": 1.0} and sx.slurm == {"qos": "q-m-p-sub"}
    assert plan.stages["after"].argv == ["cat", f"{run}/x.txt", f"{run}/y.txt"]
    assert plan.env == {"K": "8", "N": "3"} and plan.slurm == {"account": "p-acct", "nodes": 1}


def test_known_references_give_what_omegaconf_gives():
    """_Scope looks plain references up among values it already knows (OmegaConf's grammar is
    slow); the text must be what OmegaConf makes of the same string."""
    from omegaconf import OmegaConf

    names = {
        "vars": {"s": "a b 'q' \"d\"", "i": 7, "f": 0.5, "e": 1e-05, "b": False, "n": None, "p": "x:y=[1]"},
        "stages": {"sft-data": {"out": "/r/sft-data"}},
        "out": "/r/o",
    }
    text = "pre ${vars.s}|${vars.i}|${vars.f}|${vars.e}|${vars.b}|${vars.n}|${vars.p} ${stages.sft-data.out}/x ${out}"
    want = OmegaConf.to_container(OmegaConf.create({**names, "_": {"t": text}}), resolve=True)["_"]["t"]
    scope = _Scope(names)
    assert scope.fill({"t": text}, lambda k: k) == {"t": want}
    assert scope.derived == set() and not scope.pending.get("_")  # answered without OmegaConf
    assert scope.fill({"t": "${vars.i}"}, lambda k: k) == {"t": "7"}  # a file's string stays one


def test_primary_comparison_is_declared_in_the_plan(tmp_path):
    raw = yaml.safe_load((Path(__file__).parent / "fixtures/experiment/toy.yaml").read_text())
    raw["primary"] = {"stage": "compare", "margin_pp": 1.0, "claim": "COLLAB - INDEP >= 1 pp"}
    plan = parse_plan(raw, source="toy.yaml", overrides={"vars.root": str(tmp_path)})
    assert plan.primary is not None and plan.primary.stage == "compare" and plan.primary.margin_pp == 1.0
    assert plan.stages["compare"].kind == "compare"
    raw["primary"]["margin_pp"] = -1
    with pytest.raises(PlanError, match=r"^toy.yaml: primary.margin_pp: .*greater than or equal to 0"):
        parse_plan(raw, source="toy.yaml", overrides={"vars.root": str(tmp_path)})


def test_overrides_are_run_dir_and_vars_only(tmp_path):
    with pytest.raises(PlanError, match=r"override 'trainer\.max_steps': only run_dir and vars\.NAME"):
        load_plan(STUDY, overrides={"trainer.max_steps": "3"}, base_dir=ROOT)
    plan = load_plan(STUDY, overrides={"run_dir": str(tmp_path / "r"), "vars.n_eval": "10"}, base_dir=ROOT)
    assert plan.stages["eval-collab"].out == f"{tmp_path}/r/eval-collab/rollout.jsonl"
    ev = plan.stages["eval-collab"].argv
    assert ev[ev.index("--limit") + 1] == "10"


def test_the_v2_plan_registers_its_primary_comparison_from_the_vars_its_stage_reads():
    v2 = ROOT / "experiments" / "study-spider-v2.yaml"
    plan = load_plan(v2, base_dir=ROOT)
    p = plan.primary
    assert p is not None and p.stage == "compare-primary" and p.margin_pp == 1.0
    argv = plan.stages[p.stage].argv
    name_a, name_b = argv[argv.index("--name-a") + 1], argv[argv.index("--name-b") + 1]
    assert p.claim is not None and p.claim.startswith(f"{name_a} - {name_b} > 1 pp")
    assert p.metric == "selector EX (union-vote), Spider official rule (--ex spider)"
    # the pooled picks of seeds 0-2, COLLAB first
    assert [f.split("/")[-2:] for f in argv[1].split(",")] == [
        [f"pooled-s{s}", "collab-picks.jsonl"] for s in range(3)
    ]
    moved = load_plan(
        v2, base_dir=ROOT, overrides={"vars.primary_margin_pp": "2", "vars.primary_name_a": "X"}
    )
    assert moved.primary is not None and moved.primary.margin_pp == 2.0
    assert moved.primary.claim is not None and moved.primary.claim.startswith(f"X - {name_b} > 2 pp")
    assert "X" in moved.stages["compare-primary"].argv
