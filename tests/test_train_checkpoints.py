"""Picking a validator checkpoint by balanced accuracy on held-out candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matsql.backends.base import ChatPrompt, GenerationStats
from matsql.cli import app
from matsql.evaluate.diagnostics import ValidatorDiagnostics, validator_diagnostics
from matsql.records import RolloutHeader
from matsql.train.checkpoints import (
    PICK_FILE,
    Item,
    choose,
    heldout_items,
    list_checkpoints,
    pick_checkpoint,
    score,
)
from tests.record_builders import cand, ok, record


def adapter(path: Path, tag: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "tag": tag}))
    (path / "adapter_model.safetensors").write_bytes(tag.encode())
    return path


def run_dir(tmp: Path) -> Path:
    run = tmp / "orpo-val-sel"
    for step, tag in ((10, "flaggy"), (20, "sharp"), (30, "lenient")):
        adapter(run / "checkpoints" / "abc123" / f"checkpoint-{step}", tag)
    (run / "checkpoints" / "abc123" / "checkpoint-40").mkdir()  # no adapter: not a candidate
    adapter(run, "lenient")
    (run / "run.json").write_text(json.dumps({"status": "complete", "kind": "adapter", "base_model": "tiny"}))
    return run


class JudgeBackend:
    """Verdicts by the adapter's tag: ``sharp`` flags exactly the wrong SQL (marked WRONG),
    ``flaggy`` flags everything, ``lenient`` passes everything."""

    name = "judge"

    def __init__(self, path: Path) -> None:
        self.tag = json.loads((Path(path) / "adapter_config.json").read_text())["tag"]
        self.stats = GenerationStats()
        self.calls: list[tuple[int, float, int]] = []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=256, stop=None, seed=0):
        self.calls.append((n, temperature, seed))
        out = []
        for p in prompts:
            text = "\n".join(c for _, c in p.messages)
            wrong = "WRONG" in text
            verdict = {
                "sharp": "incorrect" if wrong else "correct",
                "flaggy": "incorrect",
                "lenient": "correct",
            }[self.tag]
            out.append([f" looks {verdict}\nConclude: {verdict}"] * n)
        return out


def items(n_right: int, n_wrong: int) -> list[Item]:
    def prompt(sql: str) -> ChatPrompt:
        return ChatPrompt.of([{"role": "user", "content": sql}])

    return [Item("q", i, prompt("SELECT 1"), True) for i in range(n_right)] + [
        Item("q", n_right + i, prompt("SELECT WRONG"), False) for i in range(n_wrong)
    ]


def test_list_checkpoints_orders_steps_then_final(tmp_path: Path) -> None:
    refs = list_checkpoints(run_dir(tmp_path))
    assert [(r.name, r.step) for r in refs] == [
        ("checkpoint-10", 10),
        ("checkpoint-20", 20),
        ("checkpoint-30", 30),
        ("final", 31),
    ]
    with pytest.raises(FileNotFoundError, match="save_steps"):
        list_checkpoints(tmp_path / "empty")


def recipe(run: Path, **trainer: object) -> None:
    import yaml

    (run / "recipe.yaml").write_text(yaml.safe_dump({"method": "orpo", "trainer": trainer}))


def test_a_run_whose_saved_checkpoints_are_gone_is_refused_not_picked_from(tmp_path: Path) -> None:
    """Lease 3: an ORPO run came home without its checkpoints (they stay on the machine); a
    pick here would have found the final adapter alone and "chosen" it."""
    run = run_dir(tmp_path)
    recipe(run, save_strategy="steps", save_steps=10, max_steps=30, save_total_limit=None)
    assert [r.name for r in list_checkpoints(run)] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
        "final",
    ]
    recipe(run, save_strategy="steps", save_steps=10, max_steps=50, save_total_limit=None)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-40, checkpoint-50 are not under"):
        list_checkpoints(run)
    assert [r.name for r in list_checkpoints(run, complete=False)][-1] == "final"
    # a run with no training rows saved its starting model alone (the v2 smoke's empty pair sets)
    (run / "run.json").write_text(json.dumps({"status": "no_data", "kind": "adapter"}))
    assert [r.name for r in list_checkpoints(run)][-1] == "final"
    (run / "run.json").write_text(json.dumps({"status": "complete", "kind": "adapter"}))
    # recipes that cannot say which steps were kept ask for nothing
    for tr in (
        {"save_strategy": "epoch"},
        {"save_strategy": "steps", "save_steps": 10, "max_steps": 50, "save_total_limit": 1},
        {"save_strategy": "steps", "save_steps": 10},
    ):
        recipe(run, **tr)
        assert len(list_checkpoints(run)) == 4


def test_score_counts_every_sample() -> None:
    its = items(2, 2)
    d = score("val-sel", [["correct", "incorrect"], ["correct", "unknown"], ["incorrect"], ["correct"]], its)
    assert (d.passed, d.false_alarm, d.unknown, d.caught, d.missed, d.critiques) == (2, 1, 1, 1, 1, 6)
    assert d.rates()["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_choose_prefers_balanced_accuracy_then_fewer_unknowns_then_earlier() -> None:
    def diag(
        caught: int, missed: int, passed: int, false_alarm: int, unknown: int = 0
    ) -> ValidatorDiagnostics:
        return ValidatorDiagnostics(
            "val-sel",
            caught + missed + passed + false_alarm + unknown,
            unknown,
            caught,
            false_alarm,
            passed,
            missed,
        )

    steps = {"a": 1, "b": 2, "c": 3}
    # a flags everything (accuracy on wrong ones 100%, but 50% balanced); b separates well
    assert choose({"a": diag(5, 0, 0, 5), "b": diag(4, 1, 4, 1), "c": diag(0, 5, 5, 0)}, steps) == "b"
    assert choose({"a": diag(4, 1, 4, 1, unknown=3), "b": diag(4, 1, 4, 1)}, steps) == "b"
    assert choose({"b": diag(4, 1, 4, 1), "c": diag(4, 1, 4, 1)}, steps) == "b"
    with pytest.raises(ValueError, match="both right and wrong"):
        choose({"a": diag(0, 0, 3, 1)}, steps)


def test_pick_checkpoint_keeps_the_sharp_one_with_one_shared_seed(tmp_path: Path) -> None:
    refs = list_checkpoints(run_dir(tmp_path))
    made: list[JudgeBackend] = []

    def make(path: Path) -> JudgeBackend:
        made.append(JudgeBackend(path))
        return made[-1]

    chosen, scores = pick_checkpoint(
        refs, items(6, 3), make, agent="val-sel", temperature=1.0, max_tokens=32, stop=None, seed=7, samples=2
    )
    assert chosen == "checkpoint-20"
    assert scores["checkpoint-20"].rates()["balanced_accuracy"] == 1.0
    assert scores["checkpoint-10"].rates()["false_alarm_rate"] == 1.0
    assert len(made) == 4 and all(b.calls == [(2, 1.0, 7)] for b in made)  # all made first, same seed


def test_heldout_items_skip_candidates_without_sql() -> None:
    recs = [record("q1", [cand(0, "SELECT a", ok("x"), True), cand(1, "", ok("y"), False)])]
    its = heldout_items(recs, "val-cond", lambda db: f"schema of {db}")
    assert [(i.question_id, i.candidate, i.correct) for i in its] == [("q1", 0, True)]
    assert "SELECT a" in its[0].prompt.messages[-1][1] and its[0].prompt.prefix == "CONDITION."


def test_validator_diagnostics_unchanged_by_the_shared_tally() -> None:
    from tests.record_builders import err

    recs = [
        record(
            "q1",
            [
                cand(0, "SELECT a", ok("x"), True, verdicts=("correct", "incorrect")),
                cand(
                    1,
                    "SELECT b",
                    err(),
                    False,
                    verdicts=("incorrect", "unknown"),
                    fix=("SELECT a", ok("x"), True),
                ),
                cand(
                    2,
                    "SELECT c",
                    ok("z"),
                    False,
                    verdicts=("correct", "incorrect"),
                    fix=("SELECT c", ok("z"), False),
                ),
            ],
        )
    ]
    d = validator_diagnostics(recs)
    assert (d["val-sel"].passed, d["val-sel"].caught, d["val-sel"].missed) == (1, 1, 1)
    assert (d["val-sel"].caught_fixed_runs, d["val-sel"].caught_fixed_right) == (1, 1)
    assert (d["val-cond"].false_alarm, d["val-cond"].unknown, d["val-cond"].caught) == (1, 1, 1)
    assert (d["val-cond"].caught_fixed_runs, d["val-cond"].caught_fixed_right) == (1, 0)


def test_cli_end_to_end_with_the_echo_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command as a user runs it: checkpoints, held-out rollouts of the minibench, an agents
    file; the judge stands in for the model through the registry."""
    from matsql.backends import registry
    from matsql.benchmarks.registry import load_benchmark

    qs = load_benchmark("minibench").runnable[:3]
    recs = [
        record(
            q.question_id,
            [cand(0, q.gold_sql, ok("g"), True), cand(1, "SELECT WRONG", ok("w"), False)],
            db=q.db_id,
        )
        for q in qs
    ]
    for r, q in zip(recs, qs, strict=True):
        r.question = q
    roll = tmp_path / "heldout.jsonl"
    header = RolloutHeader(matsql_version="0", config_hash="h", config={}, created="now")
    roll.write_text("\n".join(m.model_dump_json() for m in [header, *recs]) + "\n")
    agents = tmp_path / "agents.yaml"
    agents.write_text("defaults: {backend: echo}\nagents:\n  val-sel: {temperature: 1.0, max_tokens: 16}\n")
    monkeypatch.setattr(registry, "make_backend", lambda cfg, agent=None: JudgeBackend(cfg["adapter"]))
    out, run = tmp_path / "picked", run_dir(tmp_path)

    def pick_args(dest: Path) -> list[str]:
        return [
            "train",
            "pick-checkpoint",
            str(run),
            "--agent",
            "val-sel",
            "--rollouts",
            str(roll),
            "-a",
            str(agents),
            "-b",
            "minibench",
            "--out",
            str(dest),
        ]

    res = CliRunner().invoke(app, pick_args(out))
    assert res.exit_code == 0, res.output
    pick = json.loads((out / PICK_FILE).read_text())
    assert pick["chosen"] == "checkpoint-20" and pick["candidates"] == 6
    assert (out / "adapter_model.safetensors").read_bytes() == b"sharp"
    # a later training stage can continue from the pick (the v2 plan's iter2 ORPO): it has the
    # run's run.json, naming the checkpoint it now describes (session 13's smoke: it had none)
    from matsql.train.modeling import read_run

    info = read_run(out)
    assert info["kind"] == "adapter" and info["base_model"] == "tiny"
    assert info["picked_checkpoint"] == "checkpoint-20" and info["picked_step"] == 20
    assert "kept checkpoint-20 of 4" in res.output
    # --final-only: the final adapter alone, scored on the same items (the SFT reference)
    ref = tmp_path / "reference"
    res = CliRunner().invoke(app, [*pick_args(ref), "--final-only"])
    assert res.exit_code == 0, res.output
    pick = json.loads((ref / PICK_FILE).read_text())
    assert pick["chosen"] == "final" and set(pick["scores"]) == {"final"} and pick["candidates"] == 6
    assert "kept final of 1" in res.output
    # the run's checkpoints gone (shipped home without them): refused, naming them; the SFT
    # reference reads the final adapter alone and still runs
    recipe(run, save_strategy="steps", save_steps=10, max_steps=40, save_total_limit=None)
    res = CliRunner().invoke(app, pick_args(tmp_path / "again"))
    assert res.exit_code == 2 and "checkpoint-40" in res.output and not (tmp_path / "again").exists()
    res = CliRunner().invoke(app, [*pick_args(tmp_path / "ref2"), "--final-only"])
    assert res.exit_code == 0, res.output
