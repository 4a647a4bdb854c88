"""LocalBackend on the tiny random model: rendering, batching, sampling keys, stops, adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from matsql.backends.base import Backend, ChatPrompt  # noqa: E402
from matsql.backends.chat import cut_at_stop_ids, truncate_at_stop  # noqa: E402
from matsql.backends.registry import clear_engines, make_backend  # noqa: E402
from matsql.backends.transformers_local import (  # noqa: E402
    BASE,
    LocalBackend,
    LocalEngine,
    Row,
    cache_keyword,
    pack_rows,
)

MAX = 10


def user(text: str, prefix: str = "", system: str | None = None) -> ChatPrompt:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return ChatPrompt.of(msgs, prefix)


PROMPTS = [
    user("How many singers are there?"),
    user("List stadiums that hosted a concert in 2014, ordered by capacity, most first.", prefix="SELECT."),
    user("x"),
    user("Which singer is the oldest?", prefix="CONDITION.", system="Check the WHERE clause."),
    user("Count concerts per year."),
]


@pytest.fixture(scope="module")
def engine(tiny_chat_model_dir: Path) -> LocalEngine:
    return LocalEngine.load(str(tiny_chat_model_dir), device="cpu")


@pytest.fixture
def backend(engine: LocalEngine) -> LocalBackend:
    return LocalBackend(engine, batch_size=2)


def plain_greedy(engine: LocalEngine, prompt: ChatPrompt, max_tokens: int = MAX) -> str:
    """Reference: one prompt, no padding, plain ``model.generate``."""
    tok = engine.tokenizer
    ids = tok(engine.render(prompt), add_special_tokens=False, return_tensors="pt")
    out = engine.model.generate(
        **ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=engine.stop_ids
    )
    kept, _ = cut_at_stop_ids(out[0, ids["input_ids"].shape[1] :].tolist(), engine.stop_ids)
    return tok.decode(kept, skip_special_tokens=True)


def test_is_a_backend(backend: LocalBackend) -> None:
    assert isinstance(backend, Backend)


def test_greedy_matches_plain_generate_despite_batching_and_padding(backend: LocalBackend) -> None:
    out = backend.generate(PROMPTS, n=1, max_tokens=MAX)
    expected = [plain_greedy(backend.engine, p) for p in PROMPTS]
    assert [o[0] for o in out] == expected
    assert len(set(expected)) > 1  # the prompts matter, so equality is not vacuous


def test_greedy_n_repeats_one_decode(backend: LocalBackend) -> None:
    out = backend.generate(PROMPTS[:2], n=3, max_tokens=MAX)
    assert all(len(o) == 3 and len(set(o)) == 1 for o in out)
    assert backend.stats.extra["rows"] == 2  # decoded once per prompt


def test_batch_shapes_do_not_change_greedy(engine: LocalEngine) -> None:
    ref = LocalBackend(engine, batch_size=64).generate(PROMPTS, max_tokens=MAX)
    one = LocalBackend(engine, batch_size=1)
    capped = LocalBackend(engine, batch_size=64, max_batch_tokens=200)
    assert one.generate(PROMPTS, max_tokens=MAX) == ref
    assert capped.generate(PROMPTS, max_tokens=MAX) == ref
    assert one.stats.extra["batches"] == len(PROMPTS)
    assert 1 < capped.stats.extra["batches"] < len(PROMPTS)


def test_model_generation_config_does_not_leak(engine: LocalEngine) -> None:
    """Only the call's arguments define decoding: a checkpoint's sampling defaults are ignored."""
    b = LocalBackend(engine)
    ref = b.generate(PROMPTS, max_tokens=MAX)
    ref_s = b.generate(PROMPTS, n=2, temperature=1.0, max_tokens=MAX, seed=2)
    cfg = engine.model.generation_config
    saved = cfg.to_dict()
    try:
        cfg.update(repetition_penalty=50.0, top_k=1, do_sample=True, temperature=0.1, min_new_tokens=MAX)
        assert b.generate(PROMPTS, max_tokens=MAX) == ref
        assert b.generate(PROMPTS, n=2, temperature=1.0, max_tokens=MAX, seed=2) == ref_s
    finally:
        cfg.update(**saved)
    assert engine.model.generation_config.repetition_penalty == saved["repetition_penalty"]


def test_sampling_n_seed_reproducible_and_batch_invariant(engine: LocalEngine) -> None:
    a = LocalBackend(engine, batch_size=3)
    b = LocalBackend(engine, batch_size=16)
    s1 = a.generate(PROMPTS, n=4, temperature=1.0, max_tokens=MAX, seed=7)
    assert [len(x) for x in s1] == [4] * len(PROMPTS)
    assert all(len(set(x)) > 1 for x in s1)  # samples differ within a prompt
    assert a.generate(PROMPTS, n=4, temperature=1.0, max_tokens=MAX, seed=7) == s1
    assert a.generate(PROMPTS, n=4, temperature=1.0, max_tokens=MAX, seed=8) != s1
    # another batch size, another order, a subset: each prompt's samples are unchanged
    rev = b.generate(PROMPTS[::-1], n=4, temperature=1.0, max_tokens=MAX, seed=7)
    assert rev[::-1] == s1
    assert b.generate([PROMPTS[3]], n=4, temperature=1.0, max_tokens=MAX, seed=7) == [s1[3]]
    # the first samples of n=4 are the samples of n=2
    assert a.generate(PROMPTS, n=2, temperature=1.0, max_tokens=MAX, seed=7) == [x[:2] for x in s1]


def test_low_temperature_sampling_approaches_greedy(backend: LocalBackend) -> None:
    greedy = backend.generate(PROMPTS, max_tokens=MAX)
    cold = backend.generate(PROMPTS, n=2, temperature=1e-4, max_tokens=MAX, seed=3)
    assert cold == [[g[0], g[0]] for g in greedy]


def test_prefix_is_in_the_prompt_not_the_completion(backend: LocalBackend) -> None:
    p = PROMPTS[1]
    text = backend.render(p)
    tok = backend.tokenizer
    assert (
        text
        == tok.apply_chat_template(p.as_messages(), add_generation_prompt=True, tokenize=False) + "SELECT."
    )
    assert text.endswith("<|im_start|>assistant\nSELECT.")
    assert backend.encode(p) == tok(text, add_special_tokens=False)["input_ids"]
    without = backend.generate([user(p.messages[0][1])], max_tokens=MAX)
    assert backend.generate([p], max_tokens=MAX) != without  # the prefix conditions the continuation


def test_qwen_style_ids_have_no_bos(backend: LocalBackend) -> None:
    ids = backend.encode(PROMPTS[0])
    im_start = backend.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and backend.tokenizer.bos_token_id is None


def test_llama3_style_template_gives_exactly_one_bos(tiny_chat_builders) -> None:
    build_tiny_tokenizer, build_tiny_model = tiny_chat_builders
    tok = build_tiny_tokenizer(llama3=True)
    engine = LocalEngine(build_tiny_model(tok), tok, identifier="tiny-llama3")
    backend = LocalBackend(engine)
    bos = tok.bos_token_id
    ids = backend.encode(PROMPTS[3])
    assert ids[0] == bos and ids.count(bos) == 1
    # the trap this avoids: tokenizing the rendered text with special tokens doubles the BOS
    assert tok(backend.render(PROMPTS[3]))["input_ids"][:2] == [bos, bos]
    assert engine.stop_ids[0] == tok.convert_tokens_to_ids("<|eot_id|>")
    assert len(backend.generate(PROMPTS[:2], n=2, temperature=1.0, max_tokens=4)[1]) == 2


def test_stop_strings_truncate(backend: LocalBackend) -> None:
    full = backend.generate(PROMPTS, max_tokens=MAX)
    k, text = next((i, o[0]) for i, o in enumerate(full) if len(o[0]) >= 6)
    stop = text[3:5]
    got = backend.generate([PROMPTS[k]], max_tokens=MAX, stop=[stop, "never-there"])[0][0]
    assert got == text[: text.find(stop)]
    assert stop not in got


def test_end_token_never_in_text(engine: LocalEngine, tiny_chat_builders) -> None:
    """A model whose every logit is 0 emits token 0 (<|endoftext|>, an end token) at once."""
    build_model = tiny_chat_builders[1]
    tok = engine.tokenizer
    model = build_model(tok)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    b = LocalBackend(LocalEngine(model, tok, identifier="ends"))
    assert b.generate(PROMPTS[:2], n=2, max_tokens=MAX) == [["", ""], ["", ""]]
    assert b.stats.completion_tokens == 2  # the end token is generated, counted, not returned


@pytest.mark.parametrize(
    ("ids", "stops", "kept", "ended"),
    [
        ([5, 6, 2, 7], [2], [5, 6], True),
        ([5, 6], [2], [5, 6], False),
        ([2, 5], [0, 2], [], True),
        ([], [2], [], False),
    ],
)
def test_cut_at_stop_ids(ids: list[int], stops: list[int], kept: list[int], ended: bool) -> None:
    assert cut_at_stop_ids(ids, stops) == (kept, ended)


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("SELECT 1;\n```\nmore", ["```"], "SELECT 1;\n"),
        ("a;b;c", [";", "b"], "a"),
        ("abc", ["x"], "abc"),
        ("abc", None, "abc"),
        ("abc", [""], "abc"),
        ("xyz", ["yz", "x"], ""),
    ],
)
def test_truncate_at_stop(text: str, stop: list[str] | None, expected: str) -> None:
    assert truncate_at_stop(text, stop) == expected


@pytest.mark.parametrize(
    ("lengths", "batch_size", "max_batch_tokens", "expected"),
    [
        ([3, 9, 5, 9], 2, None, [[1, 3], [2, 0]]),
        ([3, 9, 5, 9], 8, None, [[1, 3, 2, 0]]),
        ([3, 9, 5, 9], 8, 2 * (9 + 4), [[1, 3], [2, 0]]),
        ([50], 8, 10, [[0]]),  # one row always goes, even past the token cap
    ],
)
def test_pack_rows(
    lengths: list[int], batch_size: int, max_batch_tokens: int | None, expected: list[list[int]]
) -> None:
    rows = [Row(i, 0, n) for i, n in enumerate(lengths)]
    got = pack_rows(rows, batch_size, max_batch_tokens, max_tokens=4)
    assert [[r.prompt for r in b] for b in got] == expected


def test_stats_count_tokens(engine: LocalEngine) -> None:
    b = LocalBackend(engine, batch_size=4)
    b.generate(PROMPTS[:3], n=2, temperature=1.0, max_tokens=MAX, seed=1)
    s = b.stats
    assert (s.calls, s.prompts, s.completions) == (1, 3, 6)
    assert s.prompt_tokens == sum(len(b.encode(p)) for p in PROMPTS[:3])
    assert 6 <= s.completion_tokens <= 6 * MAX
    assert s.seconds > 0


def test_too_long_prompt_is_a_clear_error(backend: LocalBackend) -> None:
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens"):
        backend.generate([PROMPTS[0], user("word " * 2000)], max_tokens=MAX)


@pytest.fixture(scope="module")
def adapters(tiny_chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    paths = []
    for i in range(2):
        base = AutoModelForCausalLM.from_pretrained(str(tiny_chat_model_dir))
        torch.manual_seed(100 + i)
        cfg = peft.LoraConfig(
            r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        )
        out = tmp_path_factory.mktemp(f"adapter{i}")
        peft.get_peft_model(base, cfg).save_pretrained(str(out))
        paths.append(out)
    return paths


def test_lora_adapters_switch_per_call(tiny_chat_model_dir: Path, adapters: list[Path]) -> None:
    base_out = LocalBackend(str(tiny_chat_model_dir), device="cpu").generate(PROMPTS, max_tokens=MAX)
    b = LocalBackend(str(tiny_chat_model_dir), adapter=adapters[0], device="cpu")
    second = b.add_adapter(adapters[1], name="second")
    a0 = b.generate(PROMPTS, max_tokens=MAX)
    a1 = b.generate(PROMPTS, max_tokens=MAX, adapter_name="second")
    assert a0 != base_out and a1 != base_out and a0 != a1
    assert b.generate(PROMPTS, max_tokens=MAX, adapter_name=BASE) == base_out
    assert b.generate(PROMPTS, max_tokens=MAX) == a0  # switching leaves no residue
    assert second == "second" and b.adapter in b.engine.adapters
    with pytest.raises(KeyError, match="unknown adapter"):
        b.generate(PROMPTS[:1], adapter_name="nope")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_merged_adapters_give_the_unmerged_completions(
    tiny_chat_model_dir: Path, adapters: list[Path], temperature: float
) -> None:
    """The demo merges each adapter into its own weight copy (MATSQL_MERGE_ADAPTERS=1); on the
    tiny model in fp32 that changes no token, and switching between merged copies and the base
    leaves no residue."""
    from matsql.models import load_model_and_tokenizer, resolve_model

    def engine(merge: bool) -> LocalEngine:
        model, tok = load_model_and_tokenizer(resolve_model(str(tiny_chat_model_dir)), device="cpu")
        e = LocalEngine(model, tok, merge_adapters=merge)
        e.add_adapter(adapters[0], name="a0")
        e.add_adapter(adapters[1], name="a1")
        return e

    merged, unmerged = engine(True), engine(False)
    assert merged.merge_adapters and set(merged.merged) == {"a0", "a1"}
    assert not unmerged.merge_adapters and not unmerged.merged
    kw = {"n": 2, "temperature": temperature, "max_tokens": MAX, "seed": 3}
    outs = {}
    for name in ("a0", "a1", BASE, "a0"):
        m = LocalBackend(merged, adapter=None).generate(PROMPTS, adapter_name=name, **kw)
        u = LocalBackend(unmerged, adapter=None).generate(PROMPTS, adapter_name=name, **kw)
        assert m == u, name
        outs[name] = m
    assert len({str(v) for v in outs.values()}) == 3  # the adapters do change the outputs
    # the base weights themselves are untouched by merging
    assert LocalBackend(merged).generate(PROMPTS, **kw) == outs[BASE]


@pytest.mark.parametrize(
    ("env", "setting", "expected"),
    [
        ("", None, False),
        ("auto", None, False),
        ("", True, True),
        ("0", True, False),
        ("1", False, True),
        ("yes", None, True),
    ],
)
def test_resolve_merge(
    monkeypatch: pytest.MonkeyPatch, env: str, setting: bool | None, expected: bool
) -> None:
    from matsql.backends.transformers_local import resolve_merge

    monkeypatch.setenv("MATSQL_MERGE_ADAPTERS", env)
    assert resolve_merge(setting) is expected


def test_resolve_merge_rejects_a_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from matsql.backends.transformers_local import resolve_merge

    monkeypatch.setenv("MATSQL_MERGE_ADAPTERS", "sometimes")
    with pytest.raises(ValueError, match="MATSQL_MERGE_ADAPTERS"):
        resolve_merge(None)


def test_registry_shares_one_engine_across_agents(tiny_chat_model_dir: Path, adapters: list[Path]) -> None:
    clear_engines()
    try:
        cfg = {"backend": "local", "model": str(tiny_chat_model_dir), "device": "cpu", "template": "ignored"}
        planner = make_backend(cfg, agent="planner")
        val = make_backend(cfg | {"adapter": str(adapters[0])}, agent="val-sel")
        assert planner.engine is val.engine
        assert planner.stats is not val.stats
        # the planner has no adapter: its outputs are the base model's even after val-sel ran
        p_before = planner.generate(PROMPTS[:2], max_tokens=MAX)
        v = val.generate(PROMPTS[:2], max_tokens=MAX)
        assert planner.generate(PROMPTS[:2], max_tokens=MAX) == p_before != v
    finally:
        clear_engines()


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"backend": "vlm", "model": "m"}, "unknown backend 'vlm'"),
        ({"backend": "vllm", "model": "m", "max_model_len": "long"}, "max_model_len"),
        ({"backend": "openai", "model": "m"}, "base_url"),
        ({"backend": "local"}, "model"),
        ({"backend": "local", "model": "m", "batch_size": "many"}, "batch_size"),
        (
            {"backend": "openai", "model": "m", "base_url": "http://x", "api_key_env": "MATSQL_NO_SUCH_VAR"},
            "MATSQL_NO_SUCH_VAR",
        ),
    ],
)
def test_registry_errors_name_the_agent(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        make_backend(cfg, agent="fixer")
    assert "fixer" in str(e.value)


def test_cpu_decoding_uses_a_static_cache_sized_to_each_batch(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU a cache grown by torch.cat each step dominated decoding (4x slower per step), so
    each batch decodes into a preallocated cache of its own longest prompt + budget, also after
    a longer call on the same model (transformers' own static caches keep the longest length a
    model has seen)."""
    from transformers import StaticCache

    seen: list[tuple[object, set[int], int]] = []
    real = engine.model.generate

    def spy(*args, **kwargs):
        cache = kwargs[cache_keyword()]
        out = real(*args, **kwargs)
        allocated = {layer.keys.shape[2] for layer in cache.layers}
        seen.append((type(cache), allocated, kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(engine.model, "generate", spy)
    b = LocalBackend(engine, batch_size=2)
    b.generate([user("word " * 100)], max_tokens=3 * MAX)
    b.generate(PROMPTS, max_tokens=MAX)
    assert engine.device.type == "cpu" and len(seen) == 1 + 3
    assert all(kind is StaticCache for kind, _, _ in seen)
    assert seen[0][1] == {seen[0][2] + 3 * MAX}
    assert [allocated for _, allocated, _ in seen[1:]] == [{width + MAX} for _, _, width in seen[1:]]
    assert len({width for _, _, width in seen[1:]}) > 1 and seen[0][2] > max(w for _, _, w in seen[1:])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_cache_gives_the_dynamic_cache_completions(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, temperature: float
) -> None:
    """The CPU's static cache changes speed, not text: the same call decoded into transformers'
    default (dynamic) cache gives the same completions, greedy and keyed-sampled, in padded
    batches of prompts of different lengths."""
    b = LocalBackend(engine, batch_size=3)
    kw = {"n": 2, "temperature": temperature, "max_tokens": MAX, "seed": 5}
    static = b.generate(PROMPTS, **kw)
    monkeypatch.setattr(engine, "kv_cache", lambda model, length: None)
    dynamic = b.generate(PROMPTS, **kw)
    assert static == dynamic
    assert len({text for out in static for text in out}) > len(PROMPTS) // 2  # not one string everywhere
