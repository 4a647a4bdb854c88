"""``matsql labels build`` / ``yield`` end to end on fixture rollouts (fake schema lookup)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.labels import commands
from matsql.records import RolloutHeader, dumps, record_prompt_digest
from tests.test_labels_records import PROMPT_FN, build_records, fake_schema, load_fixture

runner = CliRunner()
SPECS = (
    load_fixture("independent.yaml")["cases"][0]["records"]
    + [r for c in load_fixture("disagree.yaml")["cases"] for r in c["records"]]
    + load_fixture("fixer.yaml")["cases"][1]["records"]
)


@dataclass
class Rollout:
    path: Path
    seen: list[tuple[str, Path | None, str]]  # schema lookups the command made (name, root, style)


def _rollout_file(path: Path, config: dict, specs: list = SPECS) -> Path:
    header = RolloutHeader(matsql_version="0", config_hash="h", config=config, created="now")
    path.write_text("\n".join([dumps(header), *map(dumps, build_records(specs))]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def rollout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rollout:
    seen: list[tuple[str, Path | None, str]] = []

    def lookup(name: str, data: Path | None, style: str):
        seen.append((name, data, style))
        return fake_schema

    monkeypatch.setattr(commands, "schema_lookup", lookup)
    return Rollout(_rollout_file(tmp_path / "roll.jsonl", {"benchmark": "fake-bench"}), seen)


def test_build_all_modes_writes_one_folder_per_mode(rollout: Rollout, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(
        commands.labels_app,
        [
            "build",
            "--agent",
            "val-sel",
            "--rollouts",
            str(rollout.path),
            "--out",
            str(out),
            "--test-frac",
            "0.25",
        ],
    )
    assert res.exit_code == 0, res.output
    assert rollout.seen == [("fake-bench", None, "mats")]  # a header without a style: the default
    tests = set()
    for mode in ("independent", "collab", "collab_v2", "joint"):
        y = json.loads((out / mode / "yield.json").read_text())
        lines = (out / mode / "pairs.jsonl").read_text().splitlines()
        assert y["yield"]["pairs"] == len(lines) == sum(y["splits"]["pairs"].values())
        assert y["options"]["max_pairs_per_prompt"] == 4 and y["provenance"]["benchmark"] == "fake-bench"
        tests.add(tuple(y["test_questions"]))
        assert (out / mode / "pairs" / "dataset_dict.json").exists()
        assert mode in res.output
    assert len(tests) == 1 and len(next(iter(tests))) == 1  # same test questions in every mode
    summary = json.loads((out / "yield.json").read_text())
    assert [m["mode"] for m in summary["modes"]] == ["independent", "collab", "collab_v2", "joint"]
    assert (
        summary["provenance"]["rollouts"][0]["sha256"]
        == hashlib.sha256(rollout.path.read_bytes()).hexdigest()
    )
    assert "pairs / question" in res.output


def test_build_e1_writes_pairs_and_sft(rollout: Rollout, tmp_path: Path) -> None:
    from datasets import load_from_disk

    out = tmp_path / "e1"
    res = runner.invoke(
        commands.labels_app,
        [
            "build",
            "--agent",
            "fixer",
            "--mode",
            "e1",
            "--rollouts",
            str(rollout.path),
            "--out",
            str(out),
            "--benchmark",
            "b2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert rollout.seen == [("b2", None, "mats")]
    y = json.loads((out / "yield.json").read_text())
    assert y["yield"]["pairs"] == 1  # the fixer fixture case: A > B
    assert y["yield"]["sft"]["examples"] == sum(y["splits"]["sft"].values()) > 0
    sft = load_from_disk(str(out / "sft"))
    row = (sft["train"] if sft["train"].num_rows else sft["test"])[0]
    assert row["completion"][0]["content"].startswith("FIXED SQL:")


def test_build_refuses_prompts_that_differ_from_the_rollout(rollout: Rollout, tmp_path: Path) -> None:
    records = build_records(SPECS[:1])
    c0 = records[0].candidates[0]
    c0.branches[0].critiques["val-sel"].prompt_digest = (
        record_prompt_digest(PROMPT_FN("val-sel", records[0], c0)) + "0"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(dumps(records[0]) + "\n", encoding="utf-8")
    args = [
        "build",
        "--agent",
        "val-sel",
        "--rollouts",
        str(bad),
        "--out",
        str(tmp_path / "o"),
        "--benchmark",
        "x",
    ]
    res = runner.invoke(commands.labels_app, args)
    assert (
        res.exit_code == 1
        and "differ" in res.output
        and "question q1 candidate 0 branch 0 val-sel" in res.output
    )
    assert not (tmp_path / "o").exists()
    assert runner.invoke(commands.labels_app, [*args, "--no-check-prompts"]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--agent", "val-sel", "--mode", "e1"], "no mode 'e1'"),
        (["--agent", "judge"], "unknown agent"),
    ],
)
def test_build_bad_options(rollout: Rollout, tmp_path: Path, args: list[str], msg: str) -> None:
    res = runner.invoke(
        commands.labels_app, ["build", *args, "--rollouts", str(rollout.path), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and msg in res.output


def test_build_bad_line_names_file_and_line(rollout: Rollout, tmp_path: Path) -> None:
    with rollout.path.open("a") as f:
        f.write("{oops\n")
    n = len(rollout.path.read_text().splitlines())
    res = runner.invoke(
        commands.labels_app,
        ["build", "--agent", "planner", "--rollouts", str(rollout.path), "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 1 and f"roll.jsonl:{n}" in res.output.replace("\n", "")


def test_build_uses_the_schema_style_the_header_records(rollout: Rollout, tmp_path: Path) -> None:
    path = _rollout_file(tmp_path / "tiny.jsonl", {"benchmark": "fake-bench", "schema_style": "tiny"})
    args = ["build", "--agent", "val-sel", "--mode", "independent", "--no-check-prompts"]
    res = runner.invoke(commands.labels_app, [*args, "--rollouts", str(path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert rollout.seen == [("fake-bench", None, "tiny")]


def test_build_refuses_rollouts_of_two_schema_styles(rollout: Rollout, tmp_path: Path) -> None:
    a = _rollout_file(tmp_path / "a.jsonl", {"benchmark": "fake-bench", "schema_style": "tiny"}, SPECS[:1])
    b = _rollout_file(tmp_path / "b.jsonl", {"benchmark": "fake-bench"}, SPECS[1:])  # the default style
    args = ["build", "--agent", "val-sel", "--rollouts", str(a), "--rollouts", str(b)]
    res = runner.invoke(commands.labels_app, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "several schema styles" in res.output.replace("\n", "")
    assert rollout.seen == []


def test_yield_prints_every_mode(rollout: Rollout, tmp_path: Path) -> None:
    js = tmp_path / "y.json"
    res = runner.invoke(
        commands.labels_app, ["yield", str(rollout.path), "--agent", "fixer", "--json", str(js)]
    )
    assert res.exit_code == 0, res.output
    assert "e1" in res.output and "joint" in res.output
    got = json.loads(js.read_text())
    assert [s["mode"] for s in got] == ["e1", "joint"]
    assert rollout.seen == []  # no schema needed for yields
