"""Shared fixtures: a tiny randomly initialised chat model, built offline in about a second.

``tiny_chat_model_dir`` is a HF folder (config, safetensors, tokenizer with a Qwen-style chat
template and <|im_start|>/<|im_end|>/<|endoftext|>) that any code taking a model spec can load.
Its spec lives in ``tests/fixtures/tiny_chat_model.yaml``.
"""

from __future__ import annotations

import os

# One math thread per test process (and the CLI processes tests start), unless the caller says
# otherwise: the tests' models are tiny, so a second OpenMP/torch thread buys nothing, and on a
# shared or busy machine it spin-waits for a core that another job holds (a decode step of 4.3 s
# against 0.18 s for one thread, results/demo; a clean-clone suite of 10 minutes under one busy
# core). Set before torch is imported anywhere in the session.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path
from typing import Any

import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_model_spec() -> dict[str, Any]:
    return yaml.safe_load((FIXTURES / "tiny_chat_model.yaml").read_text())


def build_tiny_tokenizer(spec: dict[str, Any] | None = None, *, llama3: bool = False) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with a chat template (Qwen-style, or Llama-3
    style with a BOS that the post-processor would add a second time)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = spec or tiny_model_spec()
    t = spec["tokenizer"]
    specials = list(t["special_tokens"]) + (list(spec["llama3"]["extra_special_tokens"]) if llama3 else [])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=t["vocab_size"],
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(t["corpus"], trainer)
    kwargs: dict[str, Any] = {"eos_token": t["eos_token"], "pad_token": t["pad_token"]}
    if llama3:
        l3 = spec["llama3"]
        bos = l3["bos_token"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
        kwargs.update(bos_token=bos, eos_token=l3["eos_token"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **kwargs)
    tok.chat_template = spec["llama3"]["chat_template"] if llama3 else t["chat_template"]
    return tok


def build_tiny_model(tokenizer: Any, spec: dict[str, Any] | None = None) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    m = dict((spec or tiny_model_spec())["model"])
    seed = m.pop("seed")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **m,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen2 chat model (hidden 32, 2 layers, ~400-token BPE vocab)."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tiny_chat_model")
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_builders() -> Any:
    """In-memory builders ``(tokenizer(llama3=False), model(tokenizer))`` for variants of the tiny model."""
    pytest.importorskip("transformers")
    return build_tiny_tokenizer, build_tiny_model
