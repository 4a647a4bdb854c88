"""Recipes: overrides, validation errors that name the key, and every shipped recipe is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from matsql.train.config import (
    Recipe,
    RecipeError,
    apply_overrides,
    load_recipe,
    parse_overrides,
    parse_value,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# shipped recipes: not accelerate configs, and not the recipe.yaml a finished run keeps beside its
# run.json (recipes/tiny/prepared/planner is the demo's prepared adapter, trained from tiny/prep-planner)
ALL_RECIPES = sorted(
    p
    for p in RECIPES.rglob("*.yaml")
    if "accelerate" not in p.parts and not (p.parent / "run.json").is_file()
)

BASE = {
    "method": "sft",
    "model": {"path": "tiny"},
    "data": {"sources": [{"path": "a.jsonl"}, {"path": "b.jsonl", "weight": 2}]},
    "output_dir": "runs/x",
}


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-5", 1e-5),
        ("3", 3),
        ("0.5", 0.5),
        ("null", None),
        ("true", True),
        ("[a, b]", ["a", "b"]),
        ("x", "x"),
        ("no", "no"),  # save_strategy=no, not YAML 1.1's False
        ("off", "off"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_dotted_overrides_reach_nested_keys_and_list_items():
    raw = apply_overrides(
        BASE,
        parse_overrides(
            ["trainer.learning_rate=1e-5", "data.sources.1.weight=0.5", "peft=null", "output_dir=runs/y"]
        ),
    )
    r = Recipe.model_validate(raw)
    assert r.trainer.learning_rate == 1e-5
    assert r.data.sources[1].weight == 0.5
    assert r.peft is None and r.output_dir == "runs/y"
    assert BASE["output_dir"] == "runs/x"  # the input mapping is not mutated


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("novalue", "key=value"), ("data.sources.7.weight=1", "valid list index"), ("=3", "key=value")],
)
def test_bad_overrides_are_errors(override, fragment):
    with pytest.raises(RecipeError, match=fragment):
        apply_overrides(BASE, parse_overrides([override]))


def test_validation_errors_name_the_file_and_key(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(RecipeError) as e:
        load_recipe(p, ["trainer.per_device_train_batch_size=0", "peft.r=-1"])
    msg = str(e.value)
    assert str(p) in msg and "trainer.per_device_train_batch_size" in msg and "peft.r" in msg
    with pytest.raises(RecipeError, match="method"):
        load_recipe(p, ["method=dpo"])
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_unquoted_no_in_a_recipe_is_a_strategy_name(tmp_path):
    raw = {
        **BASE,
        "trainer": {"save_strategy": False, "eval_strategy": False},
    }  # what `save_strategy: no` loads as
    r = load_recipe(write(tmp_path, raw))
    assert r.trainer.save_strategy == "no" and r.trainer.extras() == {"eval_strategy": "no"}


def test_unknown_top_level_keys_are_rejected_but_trainer_extras_pass_through(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(RecipeError, match="typo"):
        load_recipe(p, ["typo=1"])
    r = load_recipe(p, ["trainer.weight_decay=1e-2", "trainer.optim=adamw_torch"])
    assert r.trainer.extras() == {"weight_decay": 0.01, "optim": "adamw_torch"}


def test_recipe_digest_tracks_content(tmp_path):
    p = write(tmp_path, BASE)
    a, b, c = load_recipe(p), load_recipe(p), load_recipe(p, ["trainer.seed=1"])
    assert a.sha256() == b.sha256() != c.sha256()
    assert Recipe.model_validate(yaml.safe_load(a.to_yaml())).sha256() == a.sha256()


def test_recipes_are_shipped_for_every_agent_and_arm():
    names = {str(p.relative_to(RECIPES)) for p in ALL_RECIPES}
    for agent in ("planner", "val-sel", "val-cond", "fixer", "selector"):
        assert f"qwen0.5b/sft-{agent}.v1.yaml" in names
        assert f"paper/llama3.2-1b/sft-{agent}.v1.yaml" in names
        assert f"tiny/sft-{agent}.v1.yaml" in names
    for it in (1, 2):
        for agent in ("val-sel", "val-cond"):
            for arm in ("collab", "indep"):
                assert f"qwen0.5b/orpo-iter{it}-{agent}-{arm}.v1.yaml" in names
    for name in ("multi_gpu.yaml", "fsdp.yaml", "single_gpu.yaml"):
        cfg = yaml.safe_load((RECIPES / "accelerate" / name).read_text())
        assert "deepspeed_config" not in cfg and cfg["num_processes"] >= 1


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_shipped_recipe_is_valid_for_trl(path):
    pytest.importorskip("trl")
    from matsql.train import orpo, sft
    from matsql.train.runner import trainer_args

    r = load_recipe(path)
    assert r.name == str(path.relative_to(RECIPES)).removesuffix(".yaml")
    assert path.stem.endswith(f".v{r.version}")
    mod = sft if r.method == "sft" else orpo
    kw = trainer_args(r, r.method, has_eval=True, valid=mod.config_fields())
    if r.method == "orpo":
        assert kw["beta"] == 0.1 and r.trainer.nll_scope == "completion"
        assert r.init_from  # ORPO starts from an SFT (or earlier ORPO) run
    if "paper" in path.parts:
        assert r.peft is None and r.model.dtype == "float32" and r.trainer.bf16 is True
        # 3B runs under FSDP, which checkpoints activations itself (recipes/accelerate/fsdp.yaml)
        assert r.trainer.gradient_checkpointing is ("llama3.2-3b" not in path.parts)
        acc = "fsdp.yaml" if "llama3.2-3b" in path.parts else "multi_gpu.yaml"
        assert f"--config_file recipes/accelerate/{acc}" in path.read_text()
    else:
        assert r.peft is not None


def test_unknown_trainer_keys_fail_when_the_trl_config_is_built(tmp_path):
    pytest.importorskip("trl")
    from matsql.train import sft
    from matsql.train.runner import trainer_args

    r = load_recipe(write(tmp_path, BASE), ["trainer.not_a_trl_arg=1"])
    with pytest.raises(RecipeError, match="not_a_trl_arg"):
        trainer_args(r, "sft", has_eval=False, valid=sft.config_fields())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "trainer.learning_rat=1e-4",
            r"trainer\.learning_rat: unknown key \(did you mean 'learning_rate'\?\)",
        ),
        ("peft.alhpa=8", r"invalid recipe: peft\.alhpa: unknown key \(did you mean 'alpha'\?\)"),
        ("data.sources.0.wieght=2", r"data\.sources\.0\.wieght: unknown key \(did you mean 'weight'\?\)"),
    ],
)
def test_recipe_typos_are_one_line_errors_naming_the_file_and_key(override, message):
    path = RECIPES / "qwen0.5b" / "sft-planner.v1.yaml"
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(path, [override])
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
