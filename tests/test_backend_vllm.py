"""The vLLM backend: request building, seeding, adapters and decoding, against a fake engine.

The fake stands in for ``vllm.LLM``: it records what it was started with and asked, and
"generates" token ids as a pure function of (prompt ids, request seed + sample index), the
contract vLLM's per-request seeding gives. The real engine runs in ``test_vllm_engine_on_gpu``
(skipped without vLLM and CUDA) and in ``benchmarks/vllm_parity.py`` on the lent GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from matsql.backends import registry
from matsql.backends.base import Backend, ChatPrompt
from matsql.backends.chat import derive_seed
from matsql.backends.vllm_local import (
    ENGINE_ENV,
    SEED_BITS,
    EngineSettings,
    VLLMBackend,
    VLLMEngine,
    adapter_rank,
    build_requests,
    engine_env,
    lora_capacity,
)


@dataclass
class Completion:
    token_ids: list[int]


@dataclass
class Output:
    outputs: list[Completion]


@dataclass
class FakeLLM:
    """Records calls; completions depend only on (prompt ids, seed + index) or the prompt (greedy)."""

    vocab: list[int]
    end_id: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def generate(
        self, prompts: list[dict], params: list[dict], use_tqdm: bool, lora_request: Any
    ) -> list[Output]:
        self.calls.append({"prompts": prompts, "params": params, "lora": lora_request})
        outs = []
        for p, sp in zip(prompts, params, strict=True):
            key = hashlib.sha256(json.dumps(p["prompt_token_ids"]).encode()).hexdigest()
            comps = []
            for i in range(sp["n"]):
                rng = random.Random(f"{key}|{sp.get('seed', 'greedy')}|{i if 'seed' in sp else 0}")
                ids = [rng.choice(self.vocab) for _ in range(rng.randint(1, sp["max_tokens"]))]
                if len(ids) < sp["max_tokens"]:
                    ids.append(self.end_id)
                comps.append(Completion(ids))
            outs.append(Output(comps))
        return outs


def user(text: str, prefix: str = "") -> ChatPrompt:
    return ChatPrompt.of([{"role": "user", "content": text}], prefix)


PROMPTS = [user("How many singers are there?"), user("Oldest singer?", prefix="SELECT."), user("x")]


@pytest.fixture
def engine(tiny_chat_model_dir: Path) -> VLLMEngine:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_model_dir))
    # sorted ASCII letters only: get_vocab() is a hash map (its order changes from run to run) and
    # byte-level marks such as "Ġ" (space) and "Ċ" (newline) count as letters to ``str.isalpha``
    vocab = sorted(i for t, i in tok.get_vocab().items() if t.isascii() and t.isalpha())[:50]
    eng = VLLMEngine(tiny_chat_model_dir, tok, "tiny", EngineSettings(max_model_len=512))
    eng.llm_factory = lambda **kw: FakeLLM(vocab, eng.stop_ids[0], kw)
    return eng


def make_adapter(path: Path, r: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r}))
    return path


def test_build_requests_greedy_and_sampled() -> None:
    g_prompts, g = build_requests(
        [[1, 2]], ["a"], n=4, temperature=0.0, top_p=0.9, max_tokens=5, stop=["\n\n"], seed=3, stop_ids=[7]
    )
    assert g_prompts == [{"prompt_token_ids": [1, 2]}]
    assert g[0]["n"] == 1 and g[0]["temperature"] == 0.0 and "seed" not in g[0]
    assert g[0]["stop"] == ["\n\n"] and g[0]["stop_token_ids"] == [7] and g[0]["max_tokens"] == 5
    assert g[0]["detokenize"] is True  # vLLM matches stop strings on detokenized text only
    _, s = build_requests(
        [[1], [2]], ["a", "b"], n=4, temperature=1.0, top_p=0.9, max_tokens=5, stop=None, seed=3, stop_ids=[7]
    )
    assert [p["n"] for p in s] == [4, 4] and s[0]["top_p"] == 0.9 and s[0]["stop"] is None
    assert s[0]["detokenize"] is False  # no stop strings: the caller decodes the ids
    # one seed per prompt, a pure function of (seed, prompt text); vLLM adds the sample index
    assert s[0]["seed"] == derive_seed(3, "a", 0, bits=SEED_BITS) != s[1]["seed"]
    assert all(p["seed"] + 4 < 2**63 for p in s)
    # neutral sampling: nothing from the checkpoint's generation config
    assert s[0]["top_k"] == -1 and s[0]["repetition_penalty"] == 1.0 and s[0]["min_p"] == 0.0


def test_backend_protocol_shapes_and_greedy_repeat(engine: VLLMEngine) -> None:
    b = VLLMBackend(engine)
    assert isinstance(b, Backend)
    out = b.generate(PROMPTS, n=3, temperature=0.0, max_tokens=6, seed=1)
    assert [len(o) for o in out] == [3, 3, 3]
    assert all(len(set(o)) == 1 for o in out)  # greedy: one request, text repeated
    assert [p["n"] for p in engine.llm.calls[-1]["params"]] == [1, 1, 1]
    assert b.stats.completions == 9 and b.stats.prompts == 3 and b.stats.completion_tokens > 0


def test_sampling_is_keyed_by_prompt_seed_and_index(engine: VLLMEngine) -> None:
    b = VLLMBackend(engine)
    both = b.generate(PROMPTS[:2], n=4, temperature=1.0, max_tokens=8, seed=5)
    alone = b.generate(PROMPTS[1:2], n=4, temperature=1.0, max_tokens=8, seed=5)
    assert alone[0] == both[1]  # not a function of what else was in the call
    again = b.generate(PROMPTS[:2], n=4, temperature=1.0, max_tokens=8, seed=5)
    assert again == both
    other = b.generate(PROMPTS[:2], n=4, temperature=1.0, max_tokens=8, seed=6)
    assert other != both
    assert len(set(both[0])) > 1  # samples of one prompt differ


def test_prompt_tokens_match_the_transformers_rendering(engine: VLLMEngine) -> None:
    from matsql.backends.chat import encode_rendered, render_chat

    b = VLLMBackend(engine)
    b.generate(PROMPTS, temperature=0.0, max_tokens=4)
    sent = [p["prompt_token_ids"] for p in engine.llm.calls[-1]["prompts"]]
    want = encode_rendered(engine.tokenizer, [render_chat(engine.tokenizer, p) for p in PROMPTS])
    assert sent == want
    assert engine.tokenizer.decode(sent[1]).endswith("SELECT.")  # the prefix is fed, byte-exact


def test_stop_strings_and_end_ids_cut_the_text(engine: VLLMEngine) -> None:
    b = VLLMBackend(engine)
    full = b.generate(PROMPTS[:1], n=1, temperature=1.0, max_tokens=12, seed=2)[0][0]
    assert full  # the fake always makes at least one token
    cut_word = full[len(full) // 2 :]  # a tail of the text: the stop cuts there, at its first match
    stopped = b.generate(PROMPTS[:1], n=1, temperature=1.0, max_tokens=12, seed=2, stop=[cut_word])[0][0]
    assert stopped == full[: full.find(cut_word)]
    # the end-of-turn id is never decoded into the text
    ids = engine.llm.calls[-1]
    assert engine.stop_ids[0] in ids["params"][0]["stop_token_ids"]


def test_prompt_longer_than_the_engine_is_refused(engine: VLLMEngine) -> None:
    b = VLLMBackend(engine)
    with pytest.raises(ValueError, match="max_model_len=512"):
        b.generate([user("word " * 600)], max_tokens=8)


def test_adapters_go_per_request_and_size_the_engine(engine: VLLMEngine, tmp_path: Path) -> None:
    a = VLLMBackend(engine, adapter=make_adapter(tmp_path / "val-sel", 8))
    c = VLLMBackend(engine, adapter=make_adapter(tmp_path / "val-cond", 12))
    base = VLLMBackend(engine)
    kw = engine.engine_kwargs()
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 16 and kw["max_loras"] == 2
    assert kw["generation_config"] == "vllm" and kw["enable_prefix_caching"] is True
    assert kw["enforce_eager"] is True  # graphs + LoRA hung at start on the H100 (module doc)
    a.generate(PROMPTS[:1], max_tokens=3)
    assert engine.llm.calls[-1]["lora"].path == str((tmp_path / "val-sel").resolve())
    c.generate(PROMPTS[:1], max_tokens=3)
    assert engine.llm.calls[-1]["lora"].int_id == 2
    base.generate(PROMPTS[:1], max_tokens=3)
    assert engine.llm.calls[-1]["lora"] is None
    assert engine.llm.kwargs["max_lora_rank"] == 16  # started with what was registered
    # the same folder twice is one adapter; a bigger one after the start is refused, clearly
    assert VLLMBackend(engine, adapter=tmp_path / "val-sel").adapter == a.adapter
    with pytest.raises(RuntimeError, match="after the vLLM engine started"):
        VLLMBackend(engine, adapter=make_adapter(tmp_path / "fixer", 64))


def test_no_adapter_no_lora(engine: VLLMEngine) -> None:
    kw = engine.engine_kwargs()
    assert "enable_lora" not in kw and kw["enforce_eager"] is False
    assert "compilation_config" not in kw  # vLLM's own CUDA-graph sizes unless asked


def test_agents_file_reaches_the_engines_cuda_graph_sizes(tiny_chat_model_dir: Path) -> None:
    """max_cudagraph_capture_size in an agents file becomes vLLM's compilation_config."""
    registry.clear_engines()
    try:
        cfg = {"backend": "vllm", "model": str(tiny_chat_model_dir), "max_cudagraph_capture_size": 2048}
        b = registry.make_backend(cfg, agent="planner")
        assert b.engine.settings.max_cudagraph_capture_size == 2048
        assert b.engine.engine_kwargs()["compilation_config"] == {"max_cudagraph_capture_size": 2048}
    finally:
        registry.clear_engines()


def test_adapter_folder_checks(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        adapter_rank(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{bad")
    with pytest.raises(ValueError, match="line 1"):
        adapter_rank(tmp_path)
    assert adapter_rank(make_adapter(tmp_path / "ok", 8)) == 8
    assert lora_capacity([8, 33], EngineSettings()) == (64, 2)
    assert lora_capacity([8], EngineSettings(max_loras=5, max_lora_rank=32)) == (32, 5)
    with pytest.raises(ValueError, match="below"):
        lora_capacity([64], EngineSettings(max_lora_rank=16))


def test_registry_shares_one_engine_and_refuses_mixed_settings(tiny_chat_model_dir: Path) -> None:
    registry.clear_engines()
    try:
        cfg = {"backend": "vllm", "model": str(tiny_chat_model_dir), "max_model_len": 1024}
        p = registry.make_backend(cfg, agent="planner")
        s = registry.make_backend(cfg, agent="selector")
        assert isinstance(p, VLLMBackend) and p.engine is s.engine
        assert p.engine.settings.max_model_len == 1024
        assert "bfloat16:" in p.name  # the weights' digest names the exact model in records
        with pytest.raises(ValueError, match="different vLLM engine settings"):
            registry.make_backend(cfg | {"gpu_memory_utilization": 0.3}, agent="fixer")
        with pytest.raises(ValueError, match="bad vllm backend settings"):
            registry.make_backend(cfg | {"max_model_len": "many"}, agent="fixer")
    finally:
        registry.clear_engines()


def test_dense_folder_of_a_folder_is_itself_with_a_digest(tiny_chat_model_dir: Path) -> None:
    from matsql.models import dense_folder

    folder, digest = dense_folder(str(tiny_chat_model_dir))
    assert folder == tiny_chat_model_dir
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.read_bytes())
    assert digest == h.hexdigest()


def test_vllm_engine_on_gpu(tiny_chat_model_dir: Path) -> None:
    """The real engine end to end: greedy repeats, a seed reproduces, n samples per prompt."""
    pytest.importorskip("vllm", reason="vLLM is not installed (GPU machines only)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_model_dir))
    eng = VLLMEngine(
        tiny_chat_model_dir, tok, "tiny", EngineSettings(gpu_memory_utilization=0.2, max_model_len=512)
    )
    b = VLLMBackend(eng)
    g1 = b.generate(PROMPTS, n=2, temperature=0.0, max_tokens=8)
    assert all(len(set(o)) == 1 for o in g1)
    s1 = b.generate(PROMPTS, n=3, temperature=1.0, max_tokens=8, seed=4)
    s2 = b.generate(PROMPTS, n=3, temperature=1.0, max_tokens=8, seed=4)
    assert s1 == s2


def test_the_engine_takes_its_processs_share_of_the_card(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes sharing a card (`experiment run --gpu-slots 2`: two rollouts, or a rollout beside
    a training stage) each get MATSQL_GPU_MEMORY_FRACTION; vLLM sizes itself at start-up, so
    the engine scales gpu_memory_utilization by that share and the engines fit side by side."""
    from matsql.experiment.executors import LocalExecutor
    from matsql.gpu import ENV

    ex = LocalExecutor(gpus=["0"], gpu_slots=2)
    share = ex.memory_fraction(1)  # one slot of the card's two
    monkeypatch.setenv(ENV, f"{share:.4f}")
    VLLMBackend(engine).generate(PROMPTS[:1], max_tokens=3)
    assert engine.llm.kwargs["gpu_memory_utilization"] == pytest.approx(0.85 * 0.5)
    # two such engines take what one engine alone would: the agents file's 0.85 of the card
    assert 2 * engine.engine_kwargs(share)["gpu_memory_utilization"] == pytest.approx(0.85)
    # the whole card (slots 2 of 2, or no runner): the configured value
    assert ex.memory_fraction(2) is None
    assert engine.engine_kwargs(None)["gpu_memory_utilization"] == 0.85
    assert engine.engine_kwargs(1.0)["gpu_memory_utilization"] == 0.85


@pytest.mark.parametrize("raw", ["", "1"])
def test_no_share_keeps_the_configured_utilization(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    from matsql.gpu import ENV

    monkeypatch.setenv(ENV, raw)
    VLLMBackend(engine).generate(PROMPTS[:1], max_tokens=3)
    assert engine.llm.kwargs["gpu_memory_utilization"] == 0.85


def test_a_bad_share_stops_the_engine_start(engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from matsql.gpu import ENV

    monkeypatch.setenv(ENV, "half")
    with pytest.raises(ValueError, match="MATSQL_GPU_MEMORY_FRACTION must be a number"):
        VLLMBackend(engine).generate(PROMPTS[:1], max_tokens=3)
    assert engine._llm is None


def test_engines_on_a_shared_card_start_one_at_a_time(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """vLLM charges whatever the card gains during its start-up to itself: a second engine
    starting meanwhile would shrink the first one's KV cache. Under a share, a start waits for
    the card's start-up lock (held here from outside, as another process would hold it)."""
    import fcntl
    import tempfile
    import threading
    import uuid

    from matsql.gpu import ENV

    card = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", card)
    lock = Path(tempfile.gettempdir()) / f"matsql-vllm-start-{card}.lock"
    started = threading.Event()
    make = engine.llm_factory
    engine.llm_factory = lambda **kw: (started.set(), make(**kw))[1]

    def start() -> None:
        VLLMBackend(engine).generate(PROMPTS[:1], max_tokens=3)

    try:
        with lock.open("a") as other:
            fcntl.flock(other, fcntl.LOCK_EX)  # another process starting its engine on this card
            monkeypatch.setenv(ENV, "0.5")
            t = threading.Thread(target=start)
            t.start()
            assert not started.wait(0.5)  # waits for the card
            fcntl.flock(other, fcntl.LOCK_UN)
            t.join(10)
        assert started.is_set() and not t.is_alive()
        # alone on the card (no share): no lock is taken, even while one is held
        monkeypatch.delenv(ENV)
        engine._llm = None
        started.clear()
        with lock.open("a") as other:
            fcntl.flock(other, fcntl.LOCK_EX)
            start()
        assert started.is_set()
    finally:
        lock.unlink(missing_ok=True)


def _copy_model(src: Path, dst: Path) -> Path:
    """A second base model: the tiny model's files in another folder (another engine key)."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def _fake_engines(*engines: VLLMEngine) -> None:
    for eng in engines:
        vocab = sorted(i for t, i in eng.tokenizer.get_vocab().items() if t.isascii() and t.isalpha())[:50]
        eng.llm_factory = lambda e=eng, v=vocab, **kw: FakeLLM(v, e.stop_ids[0], kw)


def test_a_team_on_two_base_models_gets_an_engine_each_splitting_the_memory(
    tiny_chat_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The paper's split (1.5B planner and selector, 0.5B validators and fixer) in one process:
    one engine per base model, each started with its memory_weight's part of what the agents
    file gives one engine, so both fit where each alone would have taken the whole share."""
    from matsql.gpu import ENV

    monkeypatch.delenv(ENV, raising=False)
    small = _copy_model(tiny_chat_model_dir, tmp_path / "small")
    registry.clear_engines()
    try:
        big = {"backend": "vllm", "model": str(tiny_chat_model_dir), "gpu_memory_utilization": 0.8}
        planner = registry.make_backend(big | {"memory_weight": 2}, agent="planner")
        selector = registry.make_backend(big | {"memory_weight": 2}, agent="selector")
        val = registry.make_backend(big | {"model": str(small)}, agent="val-sel")
        fixer = registry.make_backend(big | {"model": str(small)}, agent="fixer")
        assert isinstance(planner, VLLMBackend) and isinstance(val, VLLMBackend)
        assert planner.engine is selector.engine and val.engine is fixer.engine
        assert planner.engine is not val.engine
        assert planner.engine.process_fraction == pytest.approx(2 / 3)
        assert val.engine.process_fraction == pytest.approx(1 / 3)
        _fake_engines(planner.engine, val.engine)
        planner.generate(PROMPTS[:1], max_tokens=3)
        val.generate(PROMPTS[:1], max_tokens=3)
        big_kw, small_kw = planner.engine.llm.kwargs, val.engine.llm.kwargs
        assert big_kw["model"] == str(tiny_chat_model_dir) and small_kw["model"] == str(small)
        assert big_kw["gpu_memory_utilization"] == pytest.approx(0.8 * 2 / 3, abs=1e-4)
        assert small_kw["gpu_memory_utilization"] == pytest.approx(0.8 / 3, abs=1e-4)
        # together they take what the agents file gives one engine alone
        total = big_kw["gpu_memory_utilization"] + small_kw["gpu_memory_utilization"]
        assert total == pytest.approx(0.8, abs=1e-3)
    finally:
        registry.clear_engines()


def test_two_engines_also_follow_the_processs_card_share(
    tiny_chat_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under experiment run --gpu-slots 2 the process holds half the card: each engine takes
    its part of that half, and starts under the card's start-up lock (a share below 1); so
    does an engine beside another in a process that has the card to itself."""
    from contextlib import contextmanager

    from matsql.backends import vllm_local
    from matsql.gpu import ENV

    locked: list[float | None] = []
    real_lock = vllm_local.start_lock

    @contextmanager
    def recording_lock(share: float | None):  # type: ignore[no-untyped-def]
        locked.append(share)
        with real_lock(share):
            yield

    monkeypatch.setattr(vllm_local, "start_lock", recording_lock)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"test-two-{tmp_path.name}")
    small = _copy_model(tiny_chat_model_dir, tmp_path / "small")
    registry.clear_engines()
    try:
        cfg = {"backend": "vllm", "model": str(tiny_chat_model_dir), "gpu_memory_utilization": 0.8}
        a = registry.make_backend(cfg, agent="planner")
        b = registry.make_backend(cfg | {"model": str(small)}, agent="fixer")
        _fake_engines(a.engine, b.engine)
        monkeypatch.setenv(ENV, "0.5")
        a.generate(PROMPTS[:1], max_tokens=3)
        b.generate(PROMPTS[:1], max_tokens=3)
        assert a.engine.llm.kwargs["gpu_memory_utilization"] == pytest.approx(0.8 * 0.5 * 0.5)
        assert b.engine.llm.kwargs["gpu_memory_utilization"] == pytest.approx(0.8 * 0.5 * 0.5)
        assert locked == [pytest.approx(0.25), pytest.approx(0.25)]
        # the card to itself: each engine's part of the process is below the whole card
        monkeypatch.delenv(ENV)
        assert a.engine.memory_share() == pytest.approx(0.5)
        # one engine alone in a process with the card to itself: the configured value, no lock
        registry.clear_engines()
        c = registry.make_backend(cfg, agent="planner")
        assert c.engine.process_fraction == 1.0 and c.engine.memory_share() is None
    finally:
        registry.clear_engines()
        from tempfile import gettempdir

        (Path(gettempdir()) / f"matsql-vllm-start-test-two-{tmp_path.name}.lock").unlink(missing_ok=True)


def test_a_second_base_model_after_an_engine_started_is_refused(
    tiny_chat_model_dir: Path, tmp_path: Path
) -> None:
    """The split is fixed when an engine starts (vLLM sizes its KV cache then): an engine for
    another model made afterwards would not fit, so it is refused with what to do."""
    small = _copy_model(tiny_chat_model_dir, tmp_path / "small")
    registry.clear_engines()
    try:
        cfg = {"backend": "vllm", "model": str(tiny_chat_model_dir)}
        a = registry.make_backend(cfg, agent="planner")
        _fake_engines(a.engine)
        a.generate(PROMPTS[:1], max_tokens=3)
        assert a.engine.started
        # another agent on the started engine's model is fine
        assert registry.make_backend(cfg, agent="selector").engine is a.engine
        with pytest.raises(RuntimeError, match="before the first generation"):
            registry.make_backend(cfg | {"model": str(small)}, agent="fixer")
        # agents on one model must agree on its weight, as on every engine setting
        with pytest.raises(ValueError, match="different vLLM engine settings"):
            registry.make_backend(cfg | {"memory_weight": 3}, agent="val-sel")
        with pytest.raises(ValueError, match="memory_weight"):
            registry.make_backend(cfg | {"model": str(small), "memory_weight": 0}, agent="val-cond")
    finally:
        registry.clear_engines()


# ------------------------------------------------------------------ lora_mode: swap


def _peft_adapter(model_dir: Path, out: Path, seed: int, targets: list[str]) -> Path:
    """A saved PEFT LoRA on the tiny model with random A and B (B is zero in a fresh one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    peft.save_pretrained(str(out))
    return out


def test_merged_weights_equal_what_peft_merges(tiny_chat_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from matsql.backends.vllm_local import merged_weights, read_weights

    adapter = _peft_adapter(tiny_chat_model_dir, tmp_path / "a", 1, ["q_proj", "v_proj", "down_proj"])
    base_model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_model_dir), dtype=torch.float32)
    want = PeftModel.from_pretrained(base_model, str(adapter)).merge_and_unload().state_dict()
    names = {n for n in want if n.endswith((".q_proj.weight", ".v_proj.weight", ".down_proj.weight"))}
    base = read_weights(tiny_chat_model_dir, names, "cpu")
    got = merged_weights(base, adapter)
    assert set(got) == names  # the targeted weights only
    for n in names:
        assert not torch.equal(got[n], base[n]), n
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6)


@dataclass
class SwapFakeLLM(FakeLLM):
    """The fake with swap mode's two engine calls, recording the weights it was given."""

    loads: list[dict[str, Any]] = field(default_factory=list)
    resets: int = 0

    def load_weights(self, weights: list[tuple[str, Any]]) -> None:
        self.loads.append(dict(weights))

    def reset_prefix_cache(self) -> None:
        self.resets += 1


def test_swap_mode_merges_each_adapter_in_before_its_calls(tiny_chat_model_dir: Path, tmp_path: Path) -> None:
    """lora_mode: swap starts the engine without LoRA (CUDA graphs allowed), sends no
    LoRARequest, and loads merged weights only when a call's adapter differs from the loaded
    one; back to the base model, every weight an adapter touched is restored."""
    pytest.importorskip("peft")
    import torch
    from transformers import AutoTokenizer

    from matsql.backends.vllm_local import merged_weights, read_weights

    a = _peft_adapter(tiny_chat_model_dir, tmp_path / "a", 1, ["q_proj", "v_proj"])
    b = _peft_adapter(tiny_chat_model_dir, tmp_path / "b", 2, ["o_proj"])
    tok = AutoTokenizer.from_pretrained(str(tiny_chat_model_dir))
    # sorted ASCII letters only: get_vocab() is a hash map (its order changes from run to run) and
    # byte-level marks such as "Ġ" (space) and "Ċ" (newline) count as letters to ``str.isalpha``
    vocab = sorted(i for t, i in tok.get_vocab().items() if t.isascii() and t.isalpha())[:50]
    eng = VLLMEngine(tiny_chat_model_dir, tok, "tiny", EngineSettings(max_model_len=512, lora_mode="swap"))
    eng.llm_factory = lambda **kw: SwapFakeLLM(vocab, eng.stop_ids[0], kw)
    ba, bb, base = VLLMBackend(eng, a), VLLMBackend(eng, b), VLLMBackend(eng)
    for backend in (ba, ba, bb, base, ba):
        backend.generate(PROMPTS[:1], max_tokens=4)
    llm = eng.llm
    assert "enable_lora" not in llm.kwargs and llm.kwargs["enforce_eager"] is False
    assert all(c["lora"] is None for c in llm.calls) and len(llm.calls) == 5
    assert len(llm.loads) == 4 and llm.resets == 4  # a, b, base, a: none for the repeated call
    assert eng.swaps == 4 and eng.swap_seconds > 0
    names = {n for n in llm.loads[0]}
    base_w = read_weights(tiny_chat_model_dir, names, "cpu")
    assert all(set(load) == names for load in llm.loads)  # every touched weight, every time
    for n in names:
        want_a = merged_weights(base_w, a).get(n, base_w[n])
        want_b = merged_weights(base_w, b).get(n, base_w[n])
        assert torch.equal(llm.loads[0][n], want_a) and torch.equal(llm.loads[3][n], want_a)
        assert torch.equal(llm.loads[1][n], want_b)
        assert torch.equal(llm.loads[2][n], base_w[n])
    # a rollout's log line: what swapping cost this process's engines
    registry.clear_engines()
    assert registry.vllm_swap_notes() == []
    registry._vllm_engines["tiny"] = eng
    try:
        (note,) = registry.vllm_swap_notes()
        assert note.startswith(f"{tiny_chat_model_dir.name}: 4 adapter swap(s) into the weights in ")
    finally:
        registry._vllm_engines.clear()


def test_a_kept_engine_begins_each_stage_as_a_new_one(tiny_chat_model_dir: Path, tmp_path: Path) -> None:
    """``experiment run --warm`` keeps an engine from stage to stage. Each stage starts with an
    empty prefix cache and reads its adapters afresh: an ORPO stage run again rewrites the same
    folder, and the next stage must not use the weights of the folder's old contents."""
    pytest.importorskip("peft")
    import torch
    from transformers import AutoTokenizer

    from matsql.backends.vllm_local import merged_weights, read_weights

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_model_dir))
    vocab = sorted(i for t, i in tok.get_vocab().items() if t.isascii() and t.isalpha())[:50]
    a = _peft_adapter(tiny_chat_model_dir, tmp_path / "a", 1, ["q_proj"])
    eng = VLLMEngine(tiny_chat_model_dir, tok, "tiny", EngineSettings(max_model_len=512, lora_mode="swap"))
    eng.llm_factory = lambda **kw: SwapFakeLLM(vocab, eng.stop_ids[0], kw)
    eng.begin_stage()  # not started: nothing to reset
    VLLMBackend(eng, a).generate(PROMPTS[:1], max_tokens=4)
    llm = eng.llm
    assert (len(llm.loads), llm.resets, eng.swaps) == (1, 1, 1)
    _peft_adapter(tiny_chat_model_dir, a, 2, ["q_proj"])  # the folder rewritten between stages
    eng.begin_stage()
    assert llm.resets == 2 and eng.swaps == 0 and eng.swap_seconds == 0  # this stage's own count
    VLLMBackend(eng, a).generate(PROMPTS[:1], max_tokens=4)
    assert len(llm.loads) == 2 and eng.swaps == 1  # the same path swapped in again ...
    name = sorted(llm.loads[1])[0]  # one of the two layers' q_proj
    new = merged_weights(read_weights(tiny_chat_model_dir, set(llm.loads[1]), "cpu"), a)[name]
    assert torch.equal(llm.loads[1][name], new) and not torch.equal(
        llm.loads[0][name], new
    )  # ... as it is now
    eng.begin_stage()
    VLLMBackend(eng).generate(PROMPTS[:1], max_tokens=4)  # a base-model stage after an adapter's
    base = read_weights(tiny_chat_model_dir, {name}, "cpu")[name]
    assert len(llm.loads) == 3 and torch.equal(llm.loads[2][name], base)

    # LoRA per request: each stage registers its adapters under new ids (vLLM caches by id)
    req = VLLMEngine(tiny_chat_model_dir, tok, "tiny", EngineSettings(max_model_len=512))
    req.llm_factory = lambda **kw: SwapFakeLLM(vocab, req.stop_ids[0], kw)
    VLLMBackend(req, a).generate(PROMPTS[:1], max_tokens=3)
    assert req.llm.calls[-1]["lora"].int_id == 1 and req.llm.kwargs["max_loras"] == 1
    req.begin_stage()
    VLLMBackend(req, a).generate(PROMPTS[:1], max_tokens=3)  # fits the engine's one LoRA slot again
    assert req.llm.calls[-1]["lora"].int_id == 2 and req.llm.resets == 1
    with pytest.raises(RuntimeError, match="after the vLLM engine started"):
        VLLMBackend(req, make_adapter(tmp_path / "other", 8))  # a second one in the stage does not


def test_swap_mode_refuses_what_it_cannot_merge(tmp_path: Path, tiny_chat_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_model_dir))
    with pytest.raises(ValueError, match="lora_mode 'merge'"):
        EngineSettings(lora_mode="merge")
    eng = VLLMEngine(tiny_chat_model_dir, tok, "tiny", EngineSettings(lora_mode="swap"))
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        eng.add_adapter(make_adapter(tmp_path / "no-weights", 8))
    dora = make_adapter(tmp_path / "dora", 8)
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "use_dora": True}))
    from matsql.backends.vllm_local import merged_weights

    with pytest.raises(ValueError, match="use_dora"):
        merged_weights({}, dora)


def test_registry_passes_lora_mode() -> None:
    cfg = registry.VLLMConfig.model_validate({"backend": "vllm", "model": "m", "lora_mode": "swap"})
    assert cfg.lora_mode == "swap"
    with pytest.raises(ValueError):
        registry.VLLMConfig.model_validate({"backend": "vllm", "model": "m", "lora_mode": "merge"})


def test_a_shared_card_fixes_the_kv_cache_and_starts_without_waiting(
    tiny_chat_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared card with a known size the engine's KV cache is its part of the card less
    weights and reserve (no profiling, so no turn at the start-up lock); with
    MATSQL_VLLM_SHARED_KV=profile, or the card to itself, vLLM sizes it as before."""
    from contextlib import contextmanager

    from matsql.backends import vllm_local
    from matsql.gpu import ENV

    locked: list[float | None] = []

    @contextmanager
    def recording_lock(share: float | None):  # type: ignore[no-untyped-def]
        locked.append(share)
        yield

    card = 80 * 2**30
    monkeypatch.setattr(vllm_local, "start_lock", recording_lock)
    monkeypatch.setattr(vllm_local, "_card_bytes", lambda: card)
    weights = sum(f.stat().st_size for f in tiny_chat_model_dir.glob("*.safetensors"))
    cfg = {"backend": "vllm", "model": str(tiny_chat_model_dir), "gpu_memory_utilization": 0.8}

    def start(share: str | None, mode: str | None) -> dict:
        registry.clear_engines()
        for name, value in ((ENV, share), (vllm_local.SHARED_KV_ENV, mode)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        b = registry.make_backend(cfg, agent="planner")
        _fake_engines(b.engine)
        b.generate(PROMPTS[:1], max_tokens=3)
        return b.engine.llm.kwargs

    try:
        kw = start("0.5", None)
        assert kw["gpu_memory_utilization"] == pytest.approx(0.4)
        want = int(card * 0.4) - weights - vllm_local.NON_KV_RESERVE_BYTES - weights // 4
        assert kw["kv_cache_memory_bytes"] == want and locked == [None]
        kw = start("0.5", "profile")
        assert "kv_cache_memory_bytes" not in kw and locked[-1] == pytest.approx(0.5)
        kw = start(None, None)  # the card to itself: vLLM profiles, nothing to wait for
        assert "kv_cache_memory_bytes" not in kw and locked[-1] is None
    finally:
        registry.clear_engines()
    with pytest.raises(ValueError, match="no room for a KV cache"):
        vllm_local.shared_kv_bytes(8 * 2**30, 0.2, 2**30)


def test_the_engine_starts_in_process_without_flashinfers_sampler(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # seeded requests never reach FlashInfer's sampler; its warmup only costs a JIT compile
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "1")  # a user's choice stands
    seen: dict[str, str | None] = {}
    make = engine.llm_factory

    def factory(**kw: object) -> object:
        seen.update({k: os.environ.get(k) for k in ENGINE_ENV})
        return make(**kw)

    engine.llm_factory = factory
    VLLMBackend(engine).generate(PROMPTS[:1], n=2, temperature=1.0, max_tokens=4, seed=0)
    assert seen == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_FLASHINFER_SAMPLER": "1"}
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER")
    engine._llm = None
    VLLMBackend(engine).generate(PROMPTS[:1], n=2, temperature=1.0, max_tokens=4, seed=0)
    assert seen["VLLM_USE_FLASHINFER_SAMPLER"] == "0"


@pytest.mark.parametrize(("dtype", "want"), [("float32", "ieee"), ("bfloat16", None)])
def test_a_float32_engine_multiplies_exact_float32_in_triton(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch, dtype: str, want: str | None
) -> None:
    # vLLM's float32 attention is Triton's, whose dots would round float32 inputs to TF32
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    engine.settings = dataclasses.replace(engine.settings, dtype=dtype)
    seen: dict[str, object] = {}
    make = engine.llm_factory

    def factory(**kw: object) -> object:
        seen["env"], seen["dtype"] = os.environ.get("TRITON_F32_DEFAULT"), kw["dtype"]
        return make(**kw)

    engine.llm_factory = factory
    VLLMBackend(engine).generate(PROMPTS[:1], n=1, temperature=0.0, max_tokens=4, seed=0)
    assert seen == {"env": want, "dtype": dtype}
    monkeypatch.setenv("TRITON_F32_DEFAULT", "tf32")  # a user's choice stands
    engine._llm = None
    VLLMBackend(engine).generate(PROMPTS[:1], n=1, temperature=0.0, max_tokens=4, seed=0)
    assert seen["env"] == "tf32"
    assert engine_env("float32") == ENGINE_ENV | {"TRITON_F32_DEFAULT": "ieee"}
    assert engine_env("bfloat16") == ENGINE_ENV


def test_process_age_counts_from_this_process_start() -> None:
    import subprocess
    import sys

    from matsql.backends.vllm_local import process_age

    age = process_age()
    assert age is not None and 0 < age < 24 * 3600
    # a fresh interpreter that sleeps first is about that old when it asks
    code = "import time; time.sleep(1.0); from matsql.backends.vllm_local import process_age; print(process_age())"
    out = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert 1.0 <= out < 30
