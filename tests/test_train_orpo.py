"""ORPO runs on the tiny chat model: falling loss, eval rewards, completion-only NLL, and a
finite loss when completions are near-certain (average log p at or just below 0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

import torch
from trl.experimental.orpo import ORPOTrainer

from matsql.train import orpo
from matsql.train.config import load_recipe
from matsql.train.modeling import build_model
from matsql.train.runner import prepare, run_training, trainer_config
from tests.fixtures.train.tiny_runs import losses, pair_rows, write_jsonl, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def _trainer(recipe_path: Path, overrides: list[str] | None = None):
    recipe = load_recipe(recipe_path, overrides)
    model, tok, peft_cfg, _ = build_model(recipe)
    prep = prepare(recipe, tok)
    args = trainer_config(recipe, bool(prep.eval.rows))
    t = orpo.make_trainer(model, tok, peft_cfg, args, prep.train.rows, prep.eval.rows, recipe.nll_scope)
    return t, prep


@pytest.fixture(scope="module")
def pairs(tiny_chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("orpo")
    data = write_jsonl(d / "pairs.jsonl", pair_rows(16))
    return d, data, tiny_chat_model_dir


def test_orpo_loss_falls_and_eval_rewards_are_reported(pairs):
    d, data, model_dir = pairs
    recipe = write_recipe(d / "orpo.yaml", "orpo", model_dir, data, d / "run")
    info = run_training(load_recipe(recipe))
    curve = losses(d / "run")
    assert len(curve) == 12 and all(torch.isfinite(torch.tensor(curve)))
    assert sum(curve[-3:]) / 3 < 0.7 * sum(curve[:3]) / 3, curve
    ev, ev0 = info["metrics"]["eval"], info["metrics"]["eval_before"]
    for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_nll_loss"):
        assert key in ev and key in ev0
    assert ev["eval_rewards/margins"] > ev0["eval_rewards/margins"]
    assert ev["eval_rewards/accuracies"] == 1.0
    metrics = json.loads((d / "run" / "metrics.json").read_text())
    assert metrics["eval"] == ev and any("rewards/accuracies" in h for h in metrics["log_history"])
    assert info["kind"] == "adapter" and info["method"] == "orpo"


def _batch(trainer):
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))


def _manual_nll(logits, labels):
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    lab = labels[:, 1:]
    mask = lab != -100
    tok = logp.gather(-1, torch.where(mask, lab, 0).unsqueeze(-1)).squeeze(-1)
    return -(tok * mask).sum() / mask.sum()


def test_nll_is_over_the_chosen_completion_only(pairs):
    d, data, model_dir = pairs
    recipe = write_recipe(d / "nll.yaml", "orpo", model_dir, data, d / "nll")
    trainer, _ = _trainer(recipe)
    batch = _batch(trainer)
    model = trainer.model
    with torch.no_grad():
        c_logps, r_logps, _, _, nll = trainer.concatenated_forward(model, batch)
        logits = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
        want = _manual_nll(logits, batch["chosen_labels"])
        # TRL 1.16's own NLL includes the prompt tokens: a different number
        trl_nll = ORPOTrainer.concatenated_forward(trainer, model, batch)[4]
        full = torch.where(batch["chosen_attention_mask"] == 1, batch["chosen_input_ids"], -100)
    assert torch.allclose(nll, want, atol=1e-5)
    assert torch.allclose(trl_nll, _manual_nll(logits, full), atol=1e-4)
    assert not torch.allclose(nll, trl_nll, atol=1e-3)
    # average log p over completion tokens, as TRL's get_batch_logps(average_log_prob=True)
    ref = ORPOTrainer.get_batch_logps(logits, batch["chosen_labels"], average_log_prob=True)
    assert torch.allclose(c_logps, ref, atol=1e-5) and c_logps.shape == r_logps.shape == (4,)


def test_sequence_scope_reproduces_trls_nll(pairs):
    d, data, model_dir = pairs
    recipe = write_recipe(d / "seq.yaml", "orpo", model_dir, data, d / "seq", nll_scope="sequence")
    trainer, _ = _trainer(recipe)
    batch = _batch(trainer)
    with torch.no_grad():
        ours = trainer.concatenated_forward(trainer.model, batch)[4]
        theirs = ORPOTrainer.concatenated_forward(trainer, trainer.model, batch)[4]
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("boost", [1e4, 25.0])
def test_confident_completions_train_without_nan(pairs, boost):
    """Add ``boost`` to the logit of every actual next token: each token's probability rounds to
    1 (or within 1e-8 of it), the regime of short certain critiques where 1 - p underflows."""
    d, data, model_dir = pairs
    recipe = write_recipe(
        d / f"conf{boost}.yaml", "orpo", model_dir, data, d / f"conf{boost}", max_steps=3, logging_steps=1
    )
    trainer, _ = _trainer(recipe)
    inner = trainer.model.get_base_model()

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        nxt = torch.roll(ids, -1, dims=1)
        keep = kwargs.get("logits_to_keep")
        if isinstance(keep, torch.Tensor):  # the completion-only path computes these positions only
            nxt = nxt[:, keep]
        output.logits = output.logits + boost * torch.nn.functional.one_hot(nxt, output.logits.shape[-1])
        return output

    handle = inner.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            c, r, *_ = trainer.concatenated_forward(trainer.model, _batch(trainer))
        assert (c > -1e-6).all() and (r > -1e-6).all() and (c <= 0).all()  # the dangerous regime
        trainer.train()
    finally:
        handle.remove()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        for k in ("loss", "grad_norm", "log_odds_ratio", "nll_loss", "rewards/margins"):
            assert torch.isfinite(torch.tensor(h[k])), (k, h)
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()


def test_completion_positions_give_the_full_logits_loss_and_gradients(pairs, monkeypatch):
    """The LM head only where a completion token is predicted: the same log-probs, NLL, ORPO
    loss and LoRA gradients as computing every position's logits (MATSQL_ORPO_LOGITS=all), and
    logged logits the size of the scored tokens, not of the batch."""
    d, data, model_dir = pairs
    recipe = write_recipe(d / "keep.yaml", "orpo", model_dir, data, d / "keep")
    trainer, _ = _trainer(recipe)
    batch = _batch(trainer)
    model = trainer.model
    model.train(False)  # no dropout: the two passes must see the same network

    def run(mode: str):
        monkeypatch.setenv("MATSQL_ORPO_LOGITS", mode)
        model.zero_grad()
        out = trainer.concatenated_forward(model, batch)
        loss = out[4] - trainer.odds_ratio_loss(out[0], out[1])[0].mean()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return out, loss.detach(), grads

    widths = []
    handle = model.get_base_model().register_forward_hook(lambda m, a, o: widths.append(o.logits.shape[1]))
    try:
        fast, fast_loss, fast_g = run("completion")
        full, full_loss, full_g = run("all")
    finally:
        handle.remove()
    seq = batch["chosen_input_ids"].shape[1]
    assert widths[0] < seq <= widths[1]  # the head ran at fewer positions, then at all of them
    for a, b in zip(fast[:2], full[:2], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(fast[4], full[4], atol=1e-5) and torch.allclose(fast_loss, full_loss, atol=1e-5)
    assert fast_g.keys() == full_g.keys() and any("lora" in k for k in fast_g)
    for k in fast_g:
        assert torch.allclose(fast_g[k], full_g[k], atol=1e-5, rtol=1e-4), k
    n_scored = int((batch["chosen_labels"][:, 1:] != -100).sum())
    assert fast[2].shape[0] == n_scored and fast[2].ndim == 2  # chosen completion tokens x vocab
    # the logged logits are each row's completion positions in both modes
    assert torch.allclose(fast[2], full[2], atol=1e-5) and torch.allclose(fast[3], full[3], atol=1e-5)


def _padding(lengths: list[int], order: list[int], batch: int) -> int:
    """Pad tokens in batches of ``batch`` pairs taken in ``order``."""
    return sum(
        sum(max(lengths[i] for i in order[a : a + batch]) - lengths[i] for i in order[a : a + batch])
        for a in range(0, len(order), batch)
    )


def test_group_by_length_batches_pairs_of_similar_length(tiny_chat_model_dir: Path, tmp_path: Path):
    # pairs whose prompts differ in length, as real validator prompts do (schemas of every size)
    rows = pair_rows(160)
    for i, r in enumerate(rows):
        r["prompt"][-1]["content"] += " and more" * ((i * 7) % 23)
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    recipe = write_recipe(
        tmp_path / "orpo.yaml",
        "orpo",
        tiny_chat_model_dir,
        data,
        tmp_path / "run",
        max_steps=2,
        train_sampling_strategy="group_by_length",
    )
    t, prep = _trainer(recipe, ["limits.max_length=4096"])  # no prompt cut to one length
    lengths = list(t.train_dataset["length"])
    assert lengths == [orpo.pair_length(r) for r in prep.train.rows] and len(set(lengths)) > 10
    sampler = t._get_train_sampler(t.train_dataset)
    assert type(sampler).__name__ == "LengthGroupedSampler"
    grouped = list(sampler)
    assert sorted(grouped) == list(range(len(lengths))) and lengths[grouped[0]] == max(lengths)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert _padding(lengths, grouped, 4) < 0.5 * _padding(lengths, shuffled, 4)
    t.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in t.state.log_history if "loss" in h)


def test_the_length_column_leaves_default_training_unchanged(pairs):
    # the v2 study's remaining ORPO runs must train as its finished ones did (no grouping there)
    d, data, model_dir = pairs
    recipe = write_recipe(d / "same.yaml", "orpo", model_dir, data, d / "same", max_steps=4)
    runs = []
    for drop in (False, True):
        t, _ = _trainer(recipe)
        if drop:
            t.train_dataset = t.train_dataset.remove_columns("length")
        t.train()
        loss = [h["loss"] for h in t.state.log_history if "loss" in h]
        runs.append((loss, {k: v.detach().clone() for k, v in t.model.named_parameters() if "lora" in k}))
    (la, wa), (lb, wb) = runs
    assert la == lb and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_orpo_padding_share_counts_pad_tokens_per_batch():
    import importlib.util

    spec = importlib.util.spec_from_file_location("orpo_padding", ROOT / "benchmarks/orpo_padding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # batches [4, 2] and [3]: padded 8 + 3 tokens, real 9
    assert mod.padding_share([4, 2, 3], [0, 1, 2], 2) == pytest.approx(1 - 9 / 11)
    assert mod.padding_share([5, 5, 5, 5], [3, 1, 0, 2], 2) == 0.0
    assert mod.padding_share([], [], 8) == 0.0
