"""SFT runs on the tiny chat model: completion-only labels, falling loss, run folder, reload,
re-run, and init_from chaining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch
from safetensors.torch import load_file

from matsql.train import sft
from matsql.train.config import RecipeError, load_recipe
from matsql.train.modeling import build_model, load_run
from matsql.train.runner import dry_run, prepare, run_training, trainer_config
from tests.fixtures.train.tiny_runs import losses, sft_rows, write_jsonl, write_recipe


@pytest.fixture(scope="module")
def sft_run(tiny_chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("sft")
    data = write_jsonl(d / "sft.jsonl", sft_rows(16))
    recipe = write_recipe(d / "sft.yaml", "sft", tiny_chat_model_dir, data, d / "run")
    info = run_training(load_recipe(recipe))
    return d, recipe, info


def test_labels_cover_exactly_the_completion_and_trl_keeps_them(tiny_chat_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", "sft", tiny_chat_model_dir, data, tmp_path / "run")
    )
    model, tok, peft_cfg, _ = build_model(recipe)
    prep = prepare(recipe, tok)
    eot = tok.convert_tokens_to_ids(tok.eos_token)
    for row in prep.train.rows:
        ids, labels = row["input_ids"], row["labels"]
        start = next(i for i, lab in enumerate(labels) if lab != -100)
        assert all(lab == -100 for lab in labels[:start]) and labels[start:] == ids[start:]
        assert tok.decode(ids[start:]) == " The query counts singers.\nConclude: correct<|im_end|>"
        assert tok.decode(ids[:start]).endswith("<|im_start|>assistant\nSELECT.")
        assert ids.count(eot) == 3  # system, user, assistant
    args = trainer_config(recipe, bool(prep.eval.rows))
    trainer = sft.make_trainer(model, tok, peft_cfg, args, prep.train.rows, prep.eval.rows)
    got = trainer.train_dataset[0]
    want = next(r for r in prep.train.rows if r["input_ids"] == got["input_ids"])
    assert got["labels"] == want["labels"]  # TRL did not rebuild the labels


def test_sft_loss_falls_and_run_folder_is_complete(sft_run):
    d, recipe, info = sft_run
    run = d / "run"
    curve = losses(run)
    assert len(curve) == 12 and all(torch.isfinite(torch.tensor(curve)))
    assert sum(curve[-3:]) / 3 < 0.7 * sum(curve[:3]) / 3, curve
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer_config.json",
        "recipe.yaml",
        "metrics.json",
    ):
        assert (run / name).is_file(), name
    saved = json.loads((run / "run.json").read_text())
    assert saved == info
    assert saved["status"] == "complete" and saved["kind"] == "adapter"
    assert saved["base_model"] == str(Path(load_recipe(recipe).model.path).resolve())
    assert saved["data"][0]["sha256"] and saved["data_counts"][0]["rows"] == 16
    assert saved["metrics"]["eval"]["eval_loss"] < saved["metrics"]["eval_before"]["eval_loss"]
    assert saved["effective_batch_size"] == 4 and saved["world_size"] == 1
    # what the process held on its GPU (None on a CPU): what a stage needs of a shared card
    assert (saved["peak_gpu_memory_gib"] is None) == (not torch.cuda.is_available())
    assert load_recipe(run / "recipe.yaml").sha256() == saved["recipe_sha256"]


def test_saved_run_reloads_and_generates(sft_run, tiny_chat_model_dir):
    d, _, _ = sft_run
    model, tok = load_run(d / "run", dtype="float32", device="cpu")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained (LoRA B starts at zero)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]
    with model.disable_adapter():
        base_logits = model(ids).logits
    assert not torch.allclose(model(ids).logits, base_logits)


def test_rerun_is_a_noop_and_another_recipe_is_refused(sft_run):
    _, recipe, info = sft_run
    again = run_training(load_recipe(recipe))
    assert again.get("skipped") and again["recipe_sha256"] == info["recipe_sha256"]
    with pytest.raises(RecipeError, match="--force"):
        run_training(load_recipe(recipe, ["trainer.learning_rate=1e-3"]))


def test_init_from_continues_the_adapter_exactly(sft_run, tmp_path):
    d, recipe, _ = sft_run
    saved = load_file(str(d / "run" / "adapter_model.safetensors"))
    r2 = load_recipe(recipe, [f"init_from={d / 'run'}", f"output_dir={tmp_path / 'iter2'}"])
    model, _, peft_cfg, start = build_model(r2)
    assert (
        start.continue_adapter and peft_cfg is None and start.base_model == str(Path(r2.model.path).resolve())
    )
    params = dict(model.named_parameters())
    checked = 0
    for key, value in saved.items():
        name = next(n for n in params if n.replace(".default", "") == key)
        assert params[name].requires_grad
        assert torch.equal(params[name].detach(), value), key
        checked += 1
    assert checked == len(saved) > 0


def test_init_from_with_another_lora_shape_merges_the_adapter(sft_run, tmp_path):
    d, recipe, _ = sft_run
    trained, _ = load_run(d / "run", dtype="float32", device="cpu")
    r2 = load_recipe(recipe, [f"init_from={d / 'run'}", "peft.r=4", f"output_dir={tmp_path / 'x'}"])
    merged, tok, peft_cfg, start = build_model(r2)
    assert not start.continue_adapter and peft_cfg is not None and peft_cfg.r == 4
    ids = torch.tensor([tok("SELECT count(*) FROM singer")["input_ids"]])
    assert torch.allclose(merged(ids).logits, trained(ids).logits, atol=1e-5)


def test_no_training_rows_saves_the_starting_adapter_and_says_so(tiny_chat_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "empty.jsonl", [])
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", "sft", tiny_chat_model_dir, data, tmp_path / "run")
    )
    info = run_training(recipe)
    assert info["status"] == "no_data" and info["kind"] == "adapter"
    assert (tmp_path / "run" / "adapter_config.json").exists()
    assert "no training rows" in capsys.readouterr().err
    model, _ = load_run(tmp_path / "run", dtype=torch.float32, device="cpu")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # identical to the base model


def test_a_diverging_run_stops_at_the_first_non_finite_step_and_is_not_complete(
    tiny_chat_model_dir, tmp_path
):
    from matsql.train.guards import TrainingDiverged

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    # an absurd learning rate sends the LoRA weights to inf/NaN within a step or two
    recipe = write_recipe(
        tmp_path / "r.yaml",
        "sft",
        tiny_chat_model_dir,
        data,
        tmp_path / "run",
        learning_rate=1e30,
        max_grad_norm=0.0,
    )
    with pytest.raises(TrainingDiverged, match=r"(loss|grad_norm) = (nan|inf)"):
        run_training(load_recipe(recipe))
    run_json = tmp_path / "run" / "run.json"
    assert not run_json.exists() or json.loads(run_json.read_text()).get("status") != "complete"


def test_guard_ignores_finite_logs():
    from types import SimpleNamespace

    from matsql.train.guards import NonFiniteGuard, TrainingDiverged

    g, state = NonFiniteGuard(), SimpleNamespace(global_step=3, epoch=0.5)
    g.on_log(None, state, None, logs={"loss": 1.2, "grad_norm": 0.4, "learning_rate": 1e-4})
    with pytest.raises(TrainingDiverged, match="eval_loss = inf at step 3"):
        g.on_log(None, state, None, logs={"eval_loss": float("inf")})


def test_init_from_an_adapter_folder_without_its_tokenizer_uses_the_base_models(sft_run, tmp_path):
    """The demo's prepared planner, fixer and selector are adapter folders without tokenizer files:
    continuing one failed with 'Couldn't instantiate the backend tokenizer'. The base model's
    tokenizer is the adapter's (LoRA does not change the vocabulary)."""
    import shutil

    d, recipe, _ = sft_run
    bare = tmp_path / "bare"
    shutil.copytree(d / "run", bare)
    for f in bare.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            f.unlink()
    r2 = load_recipe(recipe, [f"init_from={bare}", f"output_dir={tmp_path / 'iter2'}"])
    _, tok, _, start = build_model(r2)
    _, base_tok, _, _ = build_model(load_recipe(recipe, [f"output_dir={tmp_path / 'base'}"]))
    assert start.continue_adapter
    text = "SELECT count(*) FROM singer"
    assert tok(text)["input_ids"] == base_tok(text)["input_ids"] and tok.pad_token == base_tok.pad_token
    rep = dry_run(r2)  # the dry run takes the same tokenizer
    assert rep["model"] == r2.model.path and rep["train"]["rows"] > 0
