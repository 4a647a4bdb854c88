"""Recipes: bases (`extends:`), overrides, validation errors that name the key, TRL's checks of
`trainer:`, and every shipped recipe gives the run it gave when each was written out in full."""

from __future__ import annotations

import json
import re
from pathlib import Path
from unittest import mock

import pytest
import yaml

from matsql.train.config import (
    RECIPE_VERSION,
    Recipe,
    RecipeError,
    apply_overrides,
    load_recipe,
    parse_overrides,
    parse_value,
    recipe_digest,
)
from tests.fixtures.train.recipe_args import GOLDEN, RECIPES, shipped_recipes

ALL_RECIPES = shipped_recipes()
BASES = sorted(p for p in RECIPES.rglob("base*.yaml"))

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
    assert r.trainer == {"learning_rate": 1e-5}
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
        load_recipe(p, ["limits.max_length=0", "peft.r=-1"])
    msg = str(e.value)
    assert str(p) in msg and "limits.max_length" in msg and "peft.r" in msg
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
    assert r.trainer == {"save_strategy": "no", "eval_strategy": "no"}


def test_unknown_top_level_keys_are_rejected_but_trainer_keys_pass_through(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(RecipeError, match="typo"):
        load_recipe(p, ["typo=1"])
    r = load_recipe(
        p, ["trainer.weight_decay=1e-2", "trainer.optim=adamw_torch", "trainer.learning_rate=1e-5"]
    )
    assert r.trainer == {"weight_decay": 0.01, "optim": "adamw_torch", "learning_rate": 1e-5}


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


def test_every_base_is_extended_and_every_recipe_extends_its_folders_base():
    used: set[Path] = set()
    for path in [*ALL_RECIPES, *BASES]:
        parent = yaml.safe_load(path.read_text()).get("extends")
        if parent:
            used.add((path.parent / parent).resolve())
    assert used == {p.resolve() for p in BASES}
    for path in ALL_RECIPES:  # leaf recipes list only what differs from their base
        raw = yaml.safe_load(path.read_text())
        assert raw["extends"] == f"base-{load_recipe(path).method}.yaml", path
        assert "version" not in raw and "model" not in raw and len(path.read_text().splitlines()) < 30


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_shipped_recipe_is_valid_for_trl(path):
    from matsql.train.runner import trainer_config

    r = load_recipe(path)
    assert r.name == str(path.relative_to(RECIPES)).removesuffix(".yaml")
    assert re.search(r"\.v\d+$", path.stem) and r.version == RECIPE_VERSION
    for has_eval in (True, False):
        cfg = trainer_config(r, has_eval, cpu_check=True)  # TRL builds (and checks) its config
        assert cfg.max_length == r.limits.max_length and cfg.seed == 0
        assert cfg.eval_strategy == (
            "no" if not has_eval else "steps" if r.trainer.get("eval_steps") else "epoch"
        )
    if r.method == "orpo":
        assert cfg.beta == 0.1 and r.nll_scope == "completion"
        assert cfg.max_completion_length == r.limits.max_completion_length
        assert r.init_from  # ORPO starts from an SFT (or earlier ORPO) run
    else:
        assert r.nll_scope is None
    if "paper" in path.parts:
        assert r.peft is None and r.model.dtype == "float32" and cfg.bf16 is True
        # 3B runs under FSDP, which checkpoints activations itself (recipes/accelerate/fsdp.yaml)
        assert cfg.gradient_checkpointing is ("llama3.2-3b" not in path.parts)
        acc = "fsdp.yaml" if "llama3.2-3b" in path.parts else "multi_gpu.yaml"
        assert f"--config_file recipes/accelerate/{acc}" in path.read_text()
    else:
        assert r.peft is not None


def test_every_shipped_recipe_gives_the_run_it_gave_written_out_in_full():
    """recipe_args.json: what each recipe gave TRL and matsql when all 46 were fully expanded
    version-1 files (captured with that code before the move to bases and pass-through)."""
    from tests.fixtures.train.recipe_args import current

    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = json.loads(json.dumps(current(), sort_keys=True))
    assert sorted(got) == sorted(want)
    diffs = {
        k: (want[k], got[k])
        for k in want
        if json.dumps(want[k], sort_keys=True) != json.dumps(got[k], sort_keys=True)
    }
    assert not diffs, next(iter(diffs.items()))


def test_extends_merges_mappings_and_replaces_lists_and_nulls(tmp_path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {
                "version": RECIPE_VERSION,
                "method": "sft",
                "model": {"path": "tiny", "dtype": "float32"},
                "peft": {"r": 4},
                "data": {"sources": [{"path": "a.jsonl"}, {"path": "b.jsonl"}], "seed": 3},
                "trainer": {"learning_rate": 1e-4, "seed": 0},
            }
        )
    )
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\ntrainer: {seed: 1, max_steps: 5}\n")
    leaf = tmp_path / "sub" / "leaf.yaml"
    leaf.parent.mkdir()
    leaf.write_text(
        "extends: ../mid.yaml\npeft: null\ndata: {sources: [{path: c.jsonl}]}\noutput_dir: runs/x\n"
    )
    r = load_recipe(leaf, ["trainer.max_steps=7"])
    assert r.model.path == "tiny" and r.model.dtype == "float32" and r.peft is None
    assert [s.path for s in r.data.sources] == ["c.jsonl"] and r.data.seed == 3  # list replaced, rest merged
    assert r.trainer == {"learning_rate": 1e-4, "seed": 1, "max_steps": 7}  # the override comes last
    assert "extends" not in r.to_yaml()
    # the resolved recipe saved beside the weights is the same run
    flat = tmp_path / "flat.yaml"
    flat.write_text(r.to_yaml())
    assert load_recipe(flat).sha256() == r.sha256()


def test_recipe_digest_is_over_the_resolved_recipe(tmp_path):
    """Moving a key between a recipe and its base, or editing a comment, is the same run (and the
    same stage hash); changing a value in the base is not."""
    base = {"version": RECIPE_VERSION, "trainer": {"learning_rate": 1e-4, "seed": 0}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text("extends: base.yaml\n" + yaml.safe_dump(BASE))
    flat = write(tmp_path, {**BASE, "trainer": base["trainer"]})
    assert recipe_digest(leaf) == recipe_digest(flat) == load_recipe(leaf).sha256()
    (tmp_path / "base.yaml").write_text("# a comment\n" + yaml.safe_dump(base))
    assert recipe_digest(leaf) == recipe_digest(flat)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**base, "trainer": {"learning_rate": 2e-4}}))
    assert recipe_digest(leaf) != recipe_digest(flat)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"r.yaml": "extends: r.yaml\n"}, "extends itself"),
        ({"r.yaml": "extends: nope.yaml\n"}, "base recipe not found: .*nope.yaml"),
        ({"r.yaml": "extends: [a.yaml]\n"}, "extends: expected the path of one base recipe"),
        (
            {"r.yaml": "extends: b.yaml\n", "b.yaml": "version: 1\n"},
            r"b\.yaml: recipe version 1 is not supported",
        ),
    ],
)
def test_bad_extends_chains_are_errors_naming_the_file(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.yaml")


def test_a_version_1_recipe_is_refused_with_what_changed(tmp_path):
    """A fully expanded version-1 recipe (as run folders trained before version 2 keep it) is
    not read as version 2 (its `trainer.max_length` would otherwise reach TRL, not matsql)."""
    old = write(tmp_path, {**BASE, "version": 1, "trainer": {"max_length": 1024, "nll_scope": "completion"}})
    with pytest.raises(RecipeError, match=r"recipe version 1 is not supported .*trainer:.*limits:"):
        load_recipe(old)


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("trainer.max_length=512", "limits.max_length"),
        ("trainer.max_completion_length=64", "limits.max_completion_length"),
        ("trainer.output_dir=/tmp/x", "output_dir"),
        ("trainer.nll_scope=sequence", "nll_scope"),
    ],
)
def test_trainer_keys_matsql_sets_point_to_where_they_belong(tmp_path, override, where):
    with pytest.raises(RecipeError, match=rf"is set by matsql: write {re.escape(where)}"):
        load_recipe(write(tmp_path, BASE), [override])


def test_nll_scope_is_orpos(tmp_path):
    with pytest.raises(RecipeError, match="nll_scope is an ORPO setting"):
        load_recipe(write(tmp_path, BASE), ["nll_scope=sequence"])
    assert load_recipe(write(tmp_path, BASE), ["method=orpo"]).nll_scope == "completion"
    assert load_recipe(write(tmp_path, BASE), ["method=orpo", "nll_scope=sequence"]).nll_scope == "sequence"


def test_trainer_kwargs_pass_the_mapping_and_add_only_matsqls_own(tmp_path):
    from matsql.train.runner import checkpoint_dir, trainer_kwargs

    r = load_recipe(
        write(tmp_path, BASE),
        [
            "trainer.seed=3",
            "trainer.eval_steps=7",
            "trainer.bf16=auto",
            "trainer.weight_decay=0.1",
            "limits.max_length=99",
        ],
    )
    with mock.patch("matsql.train.modeling.bf16_available", return_value=True):
        kw = trainer_kwargs(r, has_eval=True)
    assert kw == {
        "seed": 3,
        "eval_steps": 7,
        "bf16": True,  # auto: what the GPU supports
        "weight_decay": 0.1,
        "output_dir": checkpoint_dir(r),
        "max_length": 99,
        "data_seed": 3,
        "ddp_find_unused_parameters": False,
        "eval_strategy": "steps",
    }
    with mock.patch("matsql.train.modeling.bf16_available", return_value=False):
        kw = trainer_kwargs(r, has_eval=False)
    assert kw["bf16"] is False and kw["eval_strategy"] == "no" and "eval_steps" not in kw
    r2 = load_recipe(
        write(tmp_path, BASE), ["method=orpo", "limits.max_completion_length=64", "trainer.eval_strategy=no"]
    )
    kw = trainer_kwargs(r2, has_eval=True)
    assert kw["max_completion_length"] == 64 and kw["eval_strategy"] == "no"  # the recipe's own value wins
    assert "data_seed" not in kw  # no seed: TRL's default seed, which TRL also uses for the data


def test_cli_overrides_of_trainer_keys_reach_trls_config(tmp_path):
    """`--set trainer.max_steps=N` and `--set trainer.save_strategy=steps` as plans and the demo
    pass them, on a recipe that extends a base."""
    from matsql.train.runner import trainer_config

    path = RECIPES / "tiny" / "sft-planner.v1.yaml"
    r = load_recipe(
        path,
        [
            "trainer.max_steps=1",
            "data.eval_sources=[]",
            "trainer.save_strategy=steps",
            "trainer.save_steps=5",
        ],
    )
    cfg = trainer_config(r, has_eval=False)
    assert (cfg.max_steps, cfg.save_strategy, cfg.save_steps, cfg.eval_strategy) == (1, "steps", 5, "no")
    assert cfg.learning_rate == 2e-4 and cfg.logging_steps == 5  # from tiny/base-sft.yaml, tiny/base.yaml
    assert cfg.output_dir.startswith(str(Path(r.output_dir) / "checkpoints"))


def test_trl_rejects_unknown_trainer_keys_and_bad_values_naming_the_recipe(tmp_path):
    from matsql.train.runner import trainer_config

    p = write(tmp_path, BASE)
    r = load_recipe(p, ["trainer.learning_rat=1e-4", "trainer.bf16=false"])
    with pytest.raises(RecipeError) as err:
        trainer_config(r, has_eval=False)
    msg = str(err.value)
    assert msg.startswith(f"{p}: trainer: SFTConfig") and "learning_rat" in msg
    assert "did you mean 'learning_rate'" in msg
    r = load_recipe(p, ["trainer.beta=0.2", "trainer.bf16=false"])  # an ORPO argument in an SFT recipe
    with pytest.raises(RecipeError, match="beta"):
        trainer_config(r, has_eval=False)
    r = load_recipe(p, ["trainer.lr_scheduler_type=sideways", "trainer.bf16=false"])
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(p))}: trainer: SFTConfig: .*sideways"):
        trainer_config(r, has_eval=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("peft.alhpa=8", r"invalid recipe: peft\.alhpa: unknown key \(did you mean 'alpha'\?\)"),
        ("data.sources.0.wieght=2", r"data\.sources\.0\.wieght: unknown key \(did you mean 'weight'\?\)"),
        ("limits.max_lenght=2", r"limits\.max_lenght: unknown key \(did you mean 'max_length'\?\)"),
    ],
)
def test_recipe_typos_are_one_line_errors_naming_the_file_and_key(override, message):
    path = RECIPES / "qwen0.5b" / "sft-planner.v1.yaml"
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(path, [override])
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_liger_recipe_says_what_it_needs_before_the_model_loads():
    """The qwen0.5b SFT recipes turn on Liger's Triton kernels: without a GPU or without the
    package, trainer_config names the recipe and the way out; a CPU dry run still checks."""
    import importlib.util

    from matsql.train import runner

    path = RECIPES / "qwen0.5b" / "sft-val-sel.v1.yaml"
    recipe = load_recipe(path)
    assert recipe.trainer["use_liger_kernel"] is True
    with mock.patch.object(runner, "_cuda", return_value=False):
        with pytest.raises(
            RecipeError, match=r"sft-val-sel\.v1\.yaml: trainer\.use_liger_kernel needs a CUDA GPU"
        ):
            runner.trainer_config(recipe, False)
        assert runner.trainer_config(recipe, False, cpu_check=True).use_cpu  # --dry-run here
        off = load_recipe(path, ["trainer.use_liger_kernel=false"])
        assert not runner.trainer_config(off, False).use_liger_kernel
    with (
        mock.patch.object(runner, "_cuda", return_value=True),
        mock.patch.object(importlib.util, "find_spec", return_value=None),
        pytest.raises(RecipeError, match=r"needs the liger-kernel package \(pip install 'matsql\[gpu\]'\)"),
    ):
        runner.trainer_config(recipe, False)
