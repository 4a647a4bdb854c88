"""`matsql experiment collect`: what a finished run folder leaves for the results folder."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from matsql.experiment.collect import collect_run, training_summary
from matsql.experiment.manifest import manifest_path
from matsql.experiment.plan import load_plan

PLAN = Path(__file__).parent / "fixtures/experiment/collect.yaml"
METRICS = {
    "train": {"train_runtime": 12.5, "epoch": 2.0},
    "eval_before": {"eval_loss": 1.5, "eval_rewards/accuracies": 0.25},
    "eval": {"eval_loss": 0.5, "eval_rewards/accuracies": 0.75},
    "log_history": [{"loss": 1.0, "step": 10}, {"loss": 0.6, "step": 20}],
}


def _done(plan, name: str, seconds: float) -> None:
    p = manifest_path(plan.run_dir, name)
    p.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": "done", "seconds": seconds, "started": "t0", "finished": "t1"}
    if name == "eval":  # a stage that queued for a GPU slot (manifests since session 12)
        record["waited_s"] = 7.25
    p.write_text(json.dumps(record))


@pytest.fixture
def run(tmp_path):
    plan = load_plan(PLAN, overrides={"vars.root": str(tmp_path)})
    out = {n: Path(s.out) for n, s in plan.stages.items()}
    out["rollout"].parent.mkdir(parents=True, exist_ok=True)
    out["rollout"].write_text('{"kind": "header"}\n{"q": 1}\n')
    out["sft"].mkdir(parents=True)
    (out["sft"] / "metrics.json").write_text(json.dumps(METRICS))
    (out["sft"] / "adapter_config.json").write_text("{}")
    (out["sft"] / "adapter_model.safetensors").write_bytes(b"weights")
    (out["sft"] / "tokenizer.json").write_text("{}" * 1000)  # not committed
    out["labels"].mkdir(parents=True)
    (out["labels"] / "yield.json").write_text(json.dumps({"pairs": 3}))
    (out["labels"] / "pairs.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n')
    (out["labels"] / "pairs").mkdir()  # a datasets folder: stays behind
    (out["labels"] / "pairs" / "data.arrow").write_bytes(b"x")
    out["eval"].parent.mkdir(parents=True)
    out["eval"].write_text('{"kind": "header"}\n')
    (out["eval"].parent / "picks.jsonl").write_text('{"question_id": "q", "correct": 1}\n')
    out["compare"].mkdir(parents=True)
    (out["compare"] / "compare.json").write_text('{"diff": 0.01}')
    (out["compare"] / "bootstrap.png").write_bytes(b"\x89PNG")
    for i, name in enumerate(["rollout", "sft", "labels", "eval", "select", "compare"]):
        _done(plan, name, float(i))
    return plan


def test_collect_keeps_outcomes_yields_metrics_and_leaves_weights(run, tmp_path):
    dest = tmp_path / "results"
    got = collect_run(run, dest)
    assert got.missing == ["pick", "never-ran"]
    assert (
        gzip.decompress((dest / "rollout.jsonl.gz").read_bytes())
        == Path(run.stages["rollout"].out).read_bytes()
    )
    assert (dest / "eval" / "rollout.jsonl.gz").is_file() and (dest / "eval" / "picks.jsonl.gz").is_file()
    assert (dest / "labels" / "yield.json").is_file() and (dest / "labels" / "pairs.jsonl.gz").is_file()
    assert not (dest / "labels" / "pairs").exists()
    assert (dest / "compare" / "bootstrap.png").is_file()
    assert not (dest / "sft").exists() and not (dest / "adapters").exists()  # no weights unless asked
    summary = json.loads((dest / "collect.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == [
        "rollout",
        "sft",
        "labels",
        "eval",
        "select",
        "compare",
    ]
    assert summary["label_yield"] == {"labels": {"pairs": 3}}
    assert summary["training"]["sft"]["eval_loss"] == {"before": 1.5, "after": 0.5}
    md = (dest / "stages.md").read_text()
    assert "| sft | 20 | 12.500 | 1.500 -> 0.500 | 0.250 -> 0.750 |" in md
    # the wait for slots beside the stage's seconds; no lease: these stamps are not timestamps
    assert "| eval | - | 3.000 | 7.250 | t0 | t1 |" in md
    assert "| rollout | - | 0.000 | - | t0 | t1 |" in md  # older manifests: no wait recorded


def test_collect_adapters_and_skip(run, tmp_path):
    dest, ad = tmp_path / "results", tmp_path / "branch"
    collect_run(run, dest, adapters=["sft"], adapters_dest=ad, skip=["labels"])
    assert sorted(p.name for p in (ad / "sft").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
    ]
    assert not (dest / "labels").exists()
    with pytest.raises(FileNotFoundError, match="stage labels"):
        collect_run(run, dest, adapters=["labels"])
    with pytest.raises(KeyError, match="no stage 'nope'"):
        collect_run(run, dest, adapters=["nope"])


def test_gzip_is_byte_stable(run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    collect_run(run, a)
    collect_run(run, b)
    assert (a / "rollout.jsonl.gz").read_bytes() == (b / "rollout.jsonl.gz").read_bytes()


def test_training_summary_without_eval():
    row = training_summary({"train": {"train_runtime": 3.0}, "log_history": []})
    assert row == {"train_runtime_s": 3.0, "epochs": None}


def test_collect_writes_portable_paths_and_every_figure_format(run, tmp_path):
    """Yields and compare files that quote the run folder's absolute paths are committed with the
    run folder's name instead (issue 20); the figure's PDF/SVG and the CSV/LaTeX tables come too."""
    run_dir = run.run_dir
    labels = Path(run.stages["labels"].out)
    (labels / "yield.json").write_text(json.dumps({"pairs": 3, "rollouts": f"{run_dir}/rollout.jsonl"}))
    cmp = Path(run.stages["compare"].out)
    (cmp / "compare.md").write_text(f"- A: {run_dir}/eval/picks.jsonl\n")
    for suffix in ("pdf", "svg", "csv", "tex"):
        (cmp / f"difference.{suffix}").write_text("x")
    dest = tmp_path / "results"
    collect_run(run, dest)
    name = run_dir.name
    assert json.loads((dest / "labels" / "yield.json").read_text())["rollouts"] == f"{name}/rollout.jsonl"
    assert json.loads((dest / "collect.json").read_text())["label_yield"]["labels"]["rollouts"] == (
        f"{name}/rollout.jsonl"
    )
    assert (dest / "compare" / "compare.md").read_text() == f"- A: {name}/eval/picks.jsonl\n"
    for suffix in ("pdf", "svg", "csv", "tex"):
        assert (dest / "compare" / f"difference.{suffix}").is_file()


def _with_primary(tmp_path, margin: str):
    """The collect toy plan with a `matsql compare` stage registered as its primary comparison,
    the margin read from a var as the study plans do."""
    import yaml

    from matsql.experiment.plan import parse_plan

    raw = yaml.safe_load(PLAN.read_text())
    raw["stages"]["compare"]["cmd"] = "compare ${stages.select.out} ${stages.select.out} --out ${out}"
    raw["vars"]["margin"] = margin
    raw["primary"] = {"stage": "compare", "margin_pp": "${vars.margin}", "claim": "A - B > ${vars.margin} pp"}
    return parse_plan(raw, source="collect.yaml", overrides={"vars.root": str(tmp_path)})


def test_collect_marks_the_primary_comparison_and_judges_it_at_the_registered_margin(run, tmp_path):
    from matsql.evaluate.statistics import compare_arms

    # A right on 60 of 100 questions, B on 50 (A's 10 extra): about +10 pp, CI well above 0
    a = {f"q{i}": float(i < 60) for i in range(100)}
    b = {f"q{i}": float(i < 50) for i in range(100)}
    result = compare_arms(a, b, name_a="A", name_b="B", n_resamples=2000)  # run without --min-gap
    assert 0.02 < result.ci_low < 0.2
    out = Path(run.stages["compare"].out) / "compare.json"
    out.write_text(json.dumps(result.model_dump(mode="json") | {"sources": {}}))

    for margin, holds in (("1", True), ("20", False)):
        plan = _with_primary(tmp_path, margin)
        assert plan.primary is not None and plan.primary.margin_pp == float(margin)
        dest = tmp_path / f"results-{margin}"
        collect_run(plan, dest)
        primary = json.loads((dest / "collect.json").read_text())["primary"]
        assert primary["stage"] == "compare" and primary["claim"] == f"A - B > {margin} pp"
        assert primary["result"]["diff_pp"] == pytest.approx(10.0)
        assert primary["result"]["ci_pp"] == [
            pytest.approx(100 * result.ci_low),
            pytest.approx(100 * result.ci_high),
        ]
        assert primary["result"]["claim_holds"] is holds
        md = (dest / "stages.md").read_text()
        assert md.startswith("# Primary comparison (pre-registered in the plan)")
        assert ("**the claim holds**" in md) is holds
        assert "| compare (**primary**, pre-registered) | - | 5.000 |" in md
        assert "| select | - | 4.000 |" in md  # other rows unmarked


def test_collect_says_when_the_primary_comparison_has_not_run(run, tmp_path):
    manifest_path(run.run_dir, "compare").unlink()
    dest = tmp_path / "results"
    collect_run(_with_primary(tmp_path, "1"), dest)
    assert json.loads((dest / "collect.json").read_text())["primary"]["result"] is None
    assert "- result: not run yet" in (dest / "stages.md").read_text()
    collect_run(run, tmp_path / "plain")  # a plan without one: no section
    assert json.loads((tmp_path / "plain" / "collect.json").read_text())["primary"] is None
    assert (tmp_path / "plain" / "stages.md").read_text().startswith("# Stages")


def test_stages_group_into_the_leases_they_ran_in():
    """Stages more than 30 minutes after everything before them had finished open a new lease;
    a stage that ran beside a longer one stays in its lease; untimed rows are left out."""
    from matsql.experiment.collect import leases

    def row(stage, start, end, seconds):
        return {"stage": stage, "started": f"2026-12-07T{start}+00:00", "finished": f"2026-12-07T{end}+00:00",
                "seconds": seconds}  # fmt: skip

    rows = [
        row("sft", "14:46:00", "14:49:00", 180.0),
        row("rollout", "14:44:00", "14:45:40", 100.0),
        row("beside", "14:47:00", "14:48:00", 60.0),  # ran during sft
        row("late", "15:15:00", "15:16:00", 60.0),  # 26 minutes after sft: same lease
        row("next", "17:00:00", "17:05:00", 300.0),  # the next session's lease
        {"stage": "old", "started": "t0", "finished": "t1", "seconds": 1.0},
    ]
    got = leases(rows)
    assert [g["stages"] for g in got] == [["rollout", "sft", "beside", "late"], ["next"]]
    assert got[0]["first_started"].startswith("2026-12-07T14:44:00")
    assert got[0]["last_finished"].startswith("2026-12-07T15:16:00")
    assert got[0]["span_s"] == 32 * 60 and got[0]["stage_seconds"] == 400.0
    assert got[1]["span_s"] == 300 and {r["stage"]: r.get("lease") for r in rows} == {
        "sft": 1, "rollout": 1, "beside": 1, "late": 1, "next": 2, "old": None,
    }  # fmt: skip


def test_stages_md_gives_the_times_per_lease_when_a_run_spans_leases():
    from matsql.experiment.collect import Collected, leases, stages_markdown

    got = Collected(
        stage_rows=[
            {
                "stage": "a",
                "seconds": 10.0,
                "started": "2026-12-07T14:00:00+00:00",
                "finished": "2026-12-07T14:00:10+00:00",
            },
            {
                "stage": "b",
                "seconds": 20.0,
                "started": "2026-12-08T09:00:00+00:00",
                "finished": "2026-12-08T09:00:20+00:00",
            },
        ]
    )
    got.leases = leases(got.stage_rows)
    md = stages_markdown(got)
    assert "| a | 1 | 10.000 |" in md and "| b | 2 | 20.000 |" in md
    assert "# Stage times per lease" in md
    assert "| 2 | 1 | 2026-12-08T09:00:00+00:00 | 2026-12-08T09:00:20+00:00 | 20.000 | 20.000 |" in md
    one = Collected(stage_rows=got.stage_rows[:1])
    one.leases = leases(one.stage_rows)
    assert "per lease" not in stages_markdown(one)  # one sitting: no table of one row


def test_a_training_stage_that_found_no_rows_is_named(run, tmp_path):
    """A training stage with no rows is done (later stages find a model) but trained nothing:
    the results say which, above the stage table."""
    sft = Path(run.stages["sft"].out)
    (sft / "run.json").write_text(json.dumps({"status": "complete"}))
    got = collect_run(run, tmp_path / "a")
    assert got.untrained == [] and "Trained on no rows" not in (tmp_path / "a" / "stages.md").read_text()
    (sft / "run.json").write_text(json.dumps({"status": "no_data"}))
    got = collect_run(run, tmp_path / "b")
    assert got.untrained == ["sft"]
    assert "**Trained on no rows**" in (tmp_path / "b" / "stages.md").read_text()
    assert json.loads((tmp_path / "b" / "collect.json").read_text())["untrained"] == ["sft"]


def test_collect_reports_training_budgets_and_every_checkpoint_a_pick_scored(run, tmp_path):
    """Issue 16's tables: train rows (pairs) and optimizer steps per training stage, and each
    pick's checkpoints in step order with catch rate and false alarms, the kept one marked."""
    sft = Path(run.stages["sft"].out)
    info = {
        "status": "complete",
        "method": "orpo",
        "data_counts": [{"train": 1370, "eval": 0}, {"train": 0, "eval": 136}],
        "train_tokens": {"rows": 1370, "prompts_cut": 381},
        "effective_batch_size": 16,
        "peak_gpu_memory_gib": 40.48,
        "metrics": {"train": {"train_runtime": 137.2, "train_steps_per_second": 1.166, "epoch": 1.86}},
    }
    (sft / "run.json").write_text(json.dumps(info))
    # steps and epochs come from the run's metrics.json, as the training table's do
    metrics = {
        "train": info["metrics"]["train"],
        "log_history": [{"loss": 0.3, "step": 10}, {"loss": 0.2, "step": 160}],
    }
    (sft / "metrics.json").write_text(json.dumps(metrics))
    (sft / "recipe.yaml").write_text("trainer:\n  learning_rate: 5.0e-05\n  beta: 0.1\n")
    pick = Path(run.stages["pick"].out)
    pick.mkdir(parents=True)
    (pick / "adapter_model.safetensors").write_bytes(b"weights")  # the kept copy: not committed
    (pick / "adapter_config.json").write_text("{}")

    def rates(ba: float, fa: float) -> dict:
        return {
            "rates": {
                "balanced_accuracy": ba,
                "catch_rate": 0.87,
                "false_alarm_rate": fa,
                "unknown_rate": 0.0,
            }
        }

    scores = {
        "checkpoint-120": rates(0.69, 0.5),
        "final": rates(0.70, 0.48),
        "checkpoint-40": rates(0.74, 0.4),
    }
    body = {
        "agent": "val-sel",
        "chosen": "checkpoint-40",
        "candidates": 1192,
        "run_dir": str(sft),
        "scores": scores,
    }
    (pick / "pick.json").write_text(json.dumps(body))
    _done(run, "pick", 1.0)
    dest = tmp_path / "results"
    got = collect_run(run, dest)
    assert got.budgets["sft"] == {
        "method": "orpo",
        "train_rows": 1370,
        "steps": 160,
        "epochs": 1.86,
        "effective_batch": 16,
        "learning_rate": 5e-05,
        "peak_gpu_memory_gib": 40.48,
        "prompts_cut": 381,
    }
    assert list(got.picks["pick"]["scores"]) == ["checkpoint-40", "checkpoint-120", "final"]
    assert (dest / "pick" / "pick.json").is_file() and not (
        dest / "pick" / "adapter_model.safetensors"
    ).exists()
    assert str(tmp_path) not in (dest / "pick" / "pick.json").read_text()  # portable paths
    md = (dest / "stages.md").read_text()
    assert "| sft | 1370 | 160 | 1.860 | 16 | 5e-05 | 40.480 | 381 |" in md
    assert "| pick | val-sel | 1192 | **checkpoint-40** | 0.740 | 0.870 | 0.400 | 0.000 |" in md
    assert md.index("checkpoint-40") < md.index("checkpoint-120") < md.index("| final |")
    summary = json.loads((dest / "collect.json").read_text())
    assert summary["picks"]["pick"]["chosen"] == "checkpoint-40" and summary["budgets"]["sft"]["steps"] == 160
