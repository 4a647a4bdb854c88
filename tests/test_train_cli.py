"""`matsql train ...`: --dry-run on CPU (batch arithmetic for an accelerate config), overrides,
errors, and `sft-data` on the built-in minibench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.train.commands import num_processes, train_app
from tests.fixtures.train.tiny_runs import pair_rows, sft_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"
MULTI_GPU = ROOT / "recipes" / "accelerate" / "multi_gpu.yaml"


def invoke(args: list[str]):
    return CliRunner().invoke(train_app, args, catch_exceptions=False)


def _report(output: str) -> dict:
    return json.loads(output[output.index("{") : output.rindex("}") + 1])


def test_num_processes_comes_from_flag_config_or_environment(monkeypatch, tmp_path):
    assert num_processes(3, MULTI_GPU) == 3
    assert num_processes(None, MULTI_GPU) == 8
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert num_processes(None, None) == 2
    bad = tmp_path / "a.yaml"
    bad.write_text("num_processes: zero\n")
    with pytest.raises(Exception, match="num_processes"):
        num_processes(None, bad)


def test_dry_run_of_a_shipped_recipe_with_a_multi_gpu_config(tiny_chat_model_dir, tmp_path):
    pytest.importorskip("transformers")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(10))
    out = tmp_path / "run"
    res = invoke(
        [
            "sft",
            str(TINY / "sft-val-sel.v1.yaml"),
            "--dry-run",
            "--accelerate-config",
            str(MULTI_GPU),
            "--set",
            f"model.path={tiny_chat_model_dir}",
            "--set",
            f"data.sources.0.path={data}",
            "data.eval_sources=[]",  # extra args in key=value form work like --set
            f"output_dir={out}",
            "trainer.gradient_accumulation_steps=3",
        ]
    )
    assert res.exit_code == 0, res.output
    rep = _report(res.stdout)
    per_device = 2  # recipes/tiny/sft-val-sel.v1.yaml
    assert rep["num_processes"] == 8 and rep["effective_batch_size"] == per_device * 3 * 8
    assert rep["train"]["rows"] == 10 and rep["eval"]["rows"] == 0 and rep["steps_per_epoch"] == 1
    assert rep["total_steps"] == 20  # the recipe's max_steps (recipes/tiny/base.yaml)
    args = rep["trainer_args"]  # what TRL's config receives: the override, the bases, matsql's own
    assert args["gradient_accumulation_steps"] == 3 and args["learning_rate"] == 2e-4
    assert (
        args["eval_strategy"] == "no"
        and args["max_length"] == 1024
        and args["output_dir"].startswith(str(out))
    )
    assert rep["examples"][0]["completion"] == " The query counts singers.\nConclude: correct<|im_end|>"
    assert rep["examples"][0]["prompt_tail"].endswith("SELECT.")
    assert not out.exists()  # nothing trained, nothing written


def test_dry_run_orpo_reports_dropped_rows_and_cut_prompts(tiny_chat_model_dir, tmp_path):
    pytest.importorskip("trl")
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(6) + pair_rows(2, chosen=" x" * 400))
    res = invoke(
        [
            "orpo",
            str(TINY / "orpo-val-sel-collab.v1.yaml"),
            "--dry-run",
            "--num-processes",
            "2",
            f"init_from={tmp_path / 'sft-not-trained-yet'}",
            f"model.path={tiny_chat_model_dir}",
            f"data.sources.0.path={data}",
            "data.eval_sources=[]",
            "limits.max_length=160",
            "limits.max_completion_length=64",
        ]
    )
    assert res.exit_code == 0, res.output
    rep = _report(res.stdout)
    assert rep["effective_batch_size"] == 2 * 1 * 2
    assert rep["train"]["rows"] == 6 and rep["train"]["dropped"] == {"completion_too_long": 2}
    assert rep["train"]["prompts_cut"] == 6 and rep["train"]["prompt_tokens"]["max"] <= 160
    assert "does not exist yet" in rep["notes"][0]


def test_wrong_method_and_bad_keys_exit_with_a_message(tmp_path):
    res = invoke(["orpo", str(TINY / "sft-planner.v1.yaml"), "--dry-run"])
    assert res.exit_code == 2 and "train sft" in res.output
    res = invoke(
        [
            "sft",
            str(TINY / "sft-planner.v1.yaml"),
            "--dry-run",
            "--set",
            "limits.max_length=0",
        ]
    )
    assert res.exit_code == 2 and "limits.max_length" in res.output
    # a trainer key TRL does not know: TRL's error, naming the recipe file
    res = invoke(
        ["sft", str(TINY / "sft-planner.v1.yaml"), "--dry-run", "--set", "trainer.learning_rat=1e-4"]
    )
    out = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 2 and "sft-planner.v1.yaml: trainer:" in out
    assert "learning_rat" in out and "did you mean 'learning_rate'" in out
    res = invoke(["sft", str(tmp_path / "missing.yaml"), "--dry-run"])
    assert res.exit_code == 2 and "not found" in res.output


def test_sft_data_on_minibench_train(tmp_path):
    pytest.importorskip("datasets")
    from matsql.benchmarks import load_benchmark
    from matsql.records import AgentOutput, Candidate, ExecInfo, RolloutRecord, dumps

    bench = load_benchmark("minibench-train")
    qs = bench.runnable[:3]
    rollout = tmp_path / "rollout.jsonl"
    with rollout.open("w") as fh:
        for q in qs:
            g = ExecInfo(status="ok", rows_digest="g", n_rows=1)
            cands = [
                Candidate(index=0, planner=AgentOutput(text="", sql=q.gold_sql), exec=g, correct=True),
                Candidate(
                    index=1,
                    planner=AgentOutput(text="", sql="SELECT 1"),
                    exec=ExecInfo(status="ok", rows_digest="w", n_rows=1),
                    correct=False,
                ),
            ]
            fh.write(dumps(RolloutRecord(question=q, gold_exec=g, candidates=cands)) + "\n")
    out = tmp_path / "sft-data"
    res = invoke(
        [
            "sft-data",
            "--agent",
            "all",
            "--benchmark",
            "minibench-train",
            "--rollouts",
            str(rollout),
            "--out",
            str(out),
            "--test-frac",
            "0.1",
        ]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "sft_data.json").read_text())
    assert set(meta["agents"]) == {"planner", "val-sel", "val-cond", "fixer", "selector"}
    planner_rows = meta["agents"]["planner"]["rows"]
    assert planner_rows["train"] + planner_rows["test"] + meta["agents"]["planner"]["skipped"].get(
        "gold_unparsable", 0
    ) == len(bench.runnable)
    assert meta["agents"]["val-sel"]["rows"]["train"] + meta["agents"]["val-sel"]["rows"]["test"] == 6
    assert meta["agents"]["selector"]["rows"]["train"] + meta["agents"]["selector"]["rows"]["test"] == 3
    for agent in meta["agents"]:
        assert (out / agent / "dataset_dict.json").is_file() and (out / f"{agent}.jsonl").is_file()
    res = invoke(["sft-data", "--agent", "fixer", "--benchmark", "minibench-train", "--out", str(out)])
    assert res.exit_code != 0 and "--rollouts" in res.output


def test_sft_data_builds_prompts_in_the_rollouts_schema_style(tmp_path):
    """The style comes from the rollout header (no environment); --schema-style overrides it, and
    a style other than the default is recorded in sft_data.json."""
    from matsql.benchmarks import load_benchmark
    from matsql.records import AgentOutput, Candidate, ExecInfo, RolloutHeader, RolloutRecord, dumps

    bench = load_benchmark("minibench-train")
    q = bench.runnable[0]
    g = ExecInfo(status="ok", rows_digest="g", n_rows=1)
    cand = Candidate(index=0, planner=AgentOutput(text="", sql=q.gold_sql), exec=g, correct=True)
    header = RolloutHeader(
        matsql_version="0",
        config_hash="h",
        config={"benchmark": "minibench-train", "schema_style": "tiny"},
        created="now",
    )
    rollout = tmp_path / "rollout.jsonl"
    rec = RolloutRecord(question=q, gold_exec=g, candidates=[cand])
    rollout.write_text(dumps(header) + "\n" + dumps(rec) + "\n", encoding="utf-8")

    def prompt_text(style_args: list[str], out: Path) -> tuple[str, dict]:
        args = [
            "sft-data",
            "--agent",
            "val-sel",
            "--benchmark",
            "minibench-train",
            "--rollouts",
            str(rollout),
        ]
        res = invoke([*args, "--test-frac", "0", "--out", str(out), *style_args])
        assert res.exit_code == 0, res.output
        row = json.loads((out / "val-sel.jsonl").read_text().splitlines()[0])
        return " ".join(m["content"] for m in row["prompt"]), json.loads((out / "sft_data.json").read_text())

    tiny, meta = prompt_text([], tmp_path / "a")
    assert bench.schema_text(q.db_id, "tiny") in tiny and meta["schema_style"] == "tiny"
    mats, meta = prompt_text(["--schema-style", "mats"], tmp_path / "b")
    assert bench.schema_text(q.db_id, "mats") in mats and "schema_style" not in meta
    res = invoke(
        [
            "sft-data",
            "--agent",
            "planner",
            "--benchmark",
            "minibench-train",
            "--schema-style",
            "fancy",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    assert res.exit_code == 2 and "--schema-style" in res.output
