"""A training stage's hash covers its recipe as resolved with its bases: a changed setting in a
base makes the stage stale, a comment or a key moved into the base does not."""

from __future__ import annotations

from pathlib import Path

import yaml

from matsql.experiment.manifest import hash_parts, stage_hash, stale_reasons
from matsql.experiment.plan import Stage

CODE = {"version": "test", "templates": "t"}
BASE = {"version": 2, "method": "sft", "model": {"path": "tiny"}, "trainer": {"learning_rate": 1e-4}}
LEAF = {"extends": "base.yaml", "data": {"sources": [{"path": "a.jsonl"}]}, "output_dir": "runs/x"}


def _stage(recipe: Path, agents: Path) -> Stage:
    return Stage(
        name="sft-planner",
        argv=["train", "sft", str(recipe), "--set", f"x.path={agents}", "--set", "trainer.max_steps=3"],
        out=str(recipe.parent / "runs" / "sft"),
    )


def test_a_training_stage_hashes_its_recipe_resolved(tmp_path):
    base, leaf, other = tmp_path / "base.yaml", tmp_path / "leaf.yaml", tmp_path / "agents.yaml"
    base.write_text(yaml.safe_dump(BASE))
    leaf.write_text(yaml.safe_dump(LEAF))
    other.write_text("a: 1\n")
    stage = _stage(leaf, other)
    parts = hash_parts(stage, {}, [stage.out], CODE)
    assert parts["files"][str(leaf)].startswith("recipe:") and not parts["files"][str(other)].startswith(
        "recipe:"
    )
    done = {"parts": parts}
    h = stage_hash(stage, {}, parts=parts)

    base.write_text("# why this learning rate\n" + yaml.safe_dump(BASE))  # a comment
    leaf.write_text(yaml.safe_dump({**LEAF, "model": {"path": "tiny"}}))  # a key the base already gives
    again = hash_parts(stage, {}, [stage.out], CODE)
    assert stage_hash(stage, {}, parts=again) == h

    base.write_text(yaml.safe_dump({**BASE, "trainer": {"learning_rate": 2e-4}}))  # a setting changed
    changed = hash_parts(stage, {}, [stage.out], CODE)
    assert stage_hash(stage, {}, parts=changed) != h
    assert stale_reasons(done, changed) == [f"{leaf} changed"]

    other.write_text("a: 2\n")  # any other named file still counts by its bytes
    assert hash_parts(stage, {}, [stage.out], CODE)["files"][str(other)] != parts["files"][str(other)]


def test_an_invalid_recipe_counts_by_its_bytes(tmp_path):
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text("extends: missing.yaml\n")
    stage = _stage(leaf, tmp_path / "none.yaml")
    files = hash_parts(stage, {}, [stage.out], CODE)["files"]
    assert len(files[str(leaf)]) == 64 and not files[str(leaf)].startswith("recipe:")
