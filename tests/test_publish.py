"""`matsql publish --dry-run`: the folder that would be pushed, read back as the Hub reads it."""

import gzip
import json
from pathlib import Path

from huggingface_hub import DatasetCard, ModelCard
from typer.testing import CliRunner

from matsql.cli import app
from matsql.experiment.publish import hub_base_model, parse_stage, teams_of

ROOT = Path(__file__).resolve().parents[1]


def _adapter(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "checkpoints").mkdir()
    (folder / "optimizer.pt").write_bytes(b"state")
    (folder / "run.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "base_model": base,
                "metrics": {"train": {"loss": 0.5}},
                "data": [{"path": "pairs", "sha256": "ab12"}],
            }
        )
    )
    return folder


def _report(folder: Path) -> None:
    folder.mkdir()
    (folder / "report.md").write_text("| config | selector EX |\n|---|---|\n| COLLAB | 61.0 |\n")
    rows = [
        {"config": name, "k": 8, "n_scored": 100, "selector_ex": ex, "metrics": {"pass@K": 0.7}}
        for name, ex in (("untrained", 0.02), ("SFT", 0.5), ("COLLAB", 0.61), ("INDEP", 0.6))
    ]
    (folder / "report.json").write_text(json.dumps(rows))


def _fake_run(root: Path) -> None:
    arts = {
        "sft-planner": _adapter(root / "sft-planner", "qwen2.5-coder-0.5b-instruct"),
        "orpo-iter1-val-sel-collab": _adapter(
            root / "orpo-iter1-val-sel-collab", "qwen2.5-coder-0.5b-instruct"
        ),
    }
    (root / "rollout.jsonl").write_text("")
    labels = root / "labels-iter1-val-sel" / "collab"
    labels.mkdir(parents=True)
    (labels / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 3)
    (root / "manifests").mkdir()
    for stage, out in (
        *arts.items(),
        ("eval", root / "rollout.jsonl"),
        ("labels-iter1-val-sel", labels.parent),
    ):
        (root / "manifests" / f"{stage}.json").write_text(
            json.dumps(
                {
                    "stage": stage,
                    "status": "done",
                    "out": str(out),
                    "command": f"{stage} --x",
                    "commit": "abc",
                }
            )
        )
    _report(root / "report")


def test_dry_run_writes_hub_cards_one_adapter_per_folder(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    res = CliRunner().invoke(app, ["publish", str(run), "--repo", "org/matsql-study", "--dry-run"])
    assert res.exit_code == 0, res.output
    folder = run / "publish"
    readme = (folder / "README.md").read_text()
    assert "COLLAB | 61.0" in readme and "models/planner-sft/README.md" in readme
    assert "org/matsql-study-preference-pairs" in readme
    card = ModelCard.load(folder / "models" / "planner-sft" / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-Coder-0.5B-Instruct"  # a hub id, not the local alias
    assert card.data.license == "apache-2.0" and card.data.library_name == "peft"
    assert "dequantized Q4_K_M GGUF" in card.text and "`matsql sft-planner --x`" in card.text
    # the planner is shared by every trained team: its card carries their results, not the untrained row
    names = [e.metric_name for e in card.data.eval_results]
    assert any("team SFT" in n for n in names) and any("team INDEP" in n for n in names)
    assert not any("untrained" in n for n in names)
    assert {e.metric_value for e in card.data.eval_results if "selector EX" in e.metric_name} == {
        50.0,
        61.0,
        60.0,
    }
    arm = ModelCard.load(folder / "models" / "val-sel-iter1-collab" / "README.md")
    assert [e.metric_value for e in arm.data.eval_results if "selector EX" in e.metric_name] == [61.0]
    assert (folder / "models" / "planner-sft" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (folder / "models" / "planner-sft" / "adapter_config.json").is_file()
    assert not (folder / "models" / "planner-sft" / "checkpoints").exists()
    assert not (folder / "models" / "planner-sft" / "optimizer.pt").exists()
    assert sorted(p.name for p in (folder / "models").iterdir()) == ["planner-sft", "val-sel-iter1-collab"]
    assert (
        not (folder / "eval").exists() and not (folder / "models" / "eval").exists()
    )  # a rollout is no model
    ds = DatasetCard.load(folder / "datasets" / "README.md")
    assert ds.data.configs == [
        {
            "config_name": "labels-iter1-val-sel-collab",
            "data_files": "labels-iter1-val-sel-collab/pairs.jsonl.gz",
        }
    ]
    with gzip.open(folder / "datasets" / "labels-iter1-val-sel-collab" / "pairs.jsonl.gz", "rt") as f:
        assert len(f.read().splitlines()) == 3
    assert "| labels-iter1-val-sel-collab | 3 |" in ds.text


def test_a_local_alias_without_a_hub_id_is_refused(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    (run / "sft-planner" / "run.json").write_text(json.dumps({"base_model": "my-local-model"}))
    res = CliRunner().invoke(app, ["publish", str(run), "--repo", "org/x", "--dry-run"])
    assert res.exit_code == 2 and "no hub id" in res.output


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["publish", str(tmp_path), "--repo", "org/x", "--dry-run"])
    assert res.exit_code == 2 and "not a run or results folder" in res.output


def test_readme_shows_the_widest_report_and_every_compare(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    (run / "report-all").mkdir()
    (run / "report-all" / "report.md").write_text("| config | selector EX |\n|---|---|\n| JOINT | 62.0 |\n")
    for name, verdict in (("compare", "COLLAB vs INDEP: tie"), ("compare-joint", "JOINT vs INDEP: tie")):
        (run / name).mkdir()
        (run / name / "compare.md").write_text(f"# {verdict}\n")
    res = CliRunner().invoke(app, ["publish", str(run), "--repo", "org/matsql-study", "--dry-run"])
    assert res.exit_code == 0, res.output
    readme = (run / "publish" / "README.md").read_text()
    assert "JOINT | 62.0" in readme and "COLLAB | 61.0" not in readme  # report-all, not report
    assert readme.index("COLLAB vs INDEP: tie") < readme.index("JOINT vs INDEP: tie")


def test_stage_names_and_base_models():
    assert parse_stage("orpo-iter2-val-cond-joint") == ("val-cond", "iter2", "joint")
    assert parse_stage("sft-selector") == ("selector", "sft", None)
    assert parse_stage("fixer-e1") == ("fixer", "e1", None)
    assert hub_base_model("smollm2-135m-instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", "Q4_1")
    assert hub_base_model("Qwen/Qwen2.5-Coder-0.5B-Instruct")[0] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    configs = ["SFT", "COLLAB-iter1", "INDEP-iter1", "COLLAB", "INDEP"]
    from matsql.experiment.publish import Artifact

    assert teams_of(Artifact("s", "val-sel", "iter1", "collab", None), configs) == ["COLLAB-iter1"]
    assert teams_of(Artifact("s", "val-sel", "iter2", "collab", None), configs) == ["COLLAB"]
    assert teams_of(Artifact("s", "fixer", "e1", None, None), configs) == ["COLLAB", "INDEP"]
    assert teams_of(Artifact("s", "val-cond", "sft", None, None), configs) == ["SFT"]


def test_the_committed_study_publishes_cards_the_hub_parses(tmp_path):
    """`matsql publish results/study-spider --repo ORG/NAME --dry-run` (the issue's check)."""
    study = ROOT / "results" / "study-spider"
    res = CliRunner().invoke(
        app, ["publish", str(study), "--repo", "ORG/NAME", "--dry-run", "--out", str(tmp_path / "p")]
    )
    assert res.exit_code == 0, res.output
    cards = sorted((tmp_path / "p" / "models").glob("*/README.md"))
    assert len(cards) == 18  # 5 SFT agents, 6 iter1 and 6 iter2 validators, the E1 fixer
    for path in cards:
        card = ModelCard.load(path)
        assert (
            card.data.base_model == "Qwen/Qwen2.5-Coder-0.5B-Instruct" and card.data.license == "apache-2.0"
        )
    collab = ModelCard.load(tmp_path / "p" / "models" / "val-sel-iter2-collab" / "README.md")
    assert [e.metric_value for e in collab.data.eval_results if "selector EX" in e.metric_name] == [54.84]
    assert DatasetCard.load(tmp_path / "p" / "datasets" / "README.md").data.configs
    text = "".join(p.read_text() for p in (tmp_path / "p").rglob("README.md"))
    assert "/root/" not in text and "/tmp/" not in text
