"""The pure parts of the parity benchmarks: TF32 rounding, the emulated attention, where token
lists part, and how ``vllm_parity.py`` sets Triton's float32 matmuls before vLLM starts."""

from __future__ import annotations

import importlib.util
import math
import os
import struct
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


tf32 = _load("parity_tf32")
parity = _load("vllm_parity")


def _tf32_loop(x: float) -> float:
    """Round one float32 to 10 mantissa bits, to nearest with ties away from zero, bit by bit."""
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    sign, rest = bits & 0x80000000, bits & 0x7FFFFFFF
    low = rest & 0x1FFF
    rest &= ~0x1FFF
    if low >= 0x1000:
        rest += 0x2000
    (out,) = struct.unpack("<f", struct.pack("<I", sign | rest))
    return out


def test_tf32_round_matches_a_bitwise_loop_and_keeps_ten_mantissa_bits() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g) * torch.pow(10.0, torch.randint(-8, 8, (2000,), generator=g).float())
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1.0, -1.0, 1 + 2**-11, 1 + 2**-12, -(1 + 2**-11)])])
    got = tf32.tf32_round(x)
    want = torch.tensor([_tf32_loop(float(v)) for v in x], dtype=torch.float32)
    assert torch.equal(got, want)
    bits = got.view(torch.int32)
    assert int((bits & 0x1FFF).abs().max()) == 0  # the 13 low mantissa bits are gone
    rel = ((got - x).abs() / x.abs().clamp_min(1e-30))[x != 0]
    assert float(rel.max()) <= 2**-11 * (1 + 1e-6)  # half a unit in the 10th bit
    assert float(tf32.tf32_round(torch.tensor([1 + 2**-11]))) == 1 + 2**-10  # a tie goes away from zero


def _reference_attention(q, k, v, scaling):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    s = (q @ k.transpose(-1, -2)) * scaling
    n = s.shape[-1]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(1, 2)


def test_tf32_attention_is_causal_grouped_attention_with_rounded_inputs() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 7, 16, generator=g, dtype=torch.float64).float()
    k = torch.randn(1, 2, 7, 16, generator=g, dtype=torch.float64).float()
    v = torch.randn(1, 2, 7, 16, generator=g, dtype=torch.float64).float()
    out, weights = tf32.tf32_attention(None, q, k, v, None, scaling=0.25)
    exact = _reference_attention(q, k, v, 0.25)
    assert weights is None and out.shape == (1, 7, 4, 16)
    diff = float((out - exact).abs().max())
    assert 0 < diff < 5e-3  # TF32's rounding shows, and stays at its size
    # inputs that TF32 holds exactly (and softmax weights of a single key) give exact attention
    qr, kr, vr = (tf32.tf32_round(t) for t in (q, k, v))
    first = tf32.tf32_attention(None, qr, kr, vr, None, scaling=0.25)[0][:, 0]
    assert torch.allclose(first, _reference_attention(qr, kr, vr, 0.25)[:, 0], atol=0, rtol=0)
    # a later query may not see later keys: changing the last key leaves earlier rows alone
    k2 = k.clone()
    k2[:, :, -1] += 1.0
    out2 = tf32.tf32_attention(None, q, k2, v, None, scaling=0.25)[0]
    assert torch.equal(out2[:, :-1], out[:, :-1]) and not torch.equal(out2[:, -1], out[:, -1])


def test_first_difference() -> None:
    assert tf32.first_difference([1, 2, 3], [1, 2, 3]) is None
    assert tf32.first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert tf32.first_difference([1, 2], [1, 2, 3]) == 2
    assert tf32.first_difference([], [4]) == 0


def test_top2_gap() -> None:
    gaps = tf32.top2_gap(torch.tensor([[3.0, 1.0, 2.5], [0.0, 0.0, -1.0]]))
    assert gaps.tolist() == [0.5, 0.0]
    assert math.isclose(float(tf32.top2_gap(torch.tensor([1.0, 4.0, 4.25]))), 0.25)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)


@pytest.mark.usefixtures("clean_env")
def test_float32_parity_runs_triton_dots_in_ieee_with_a_fresh_kernel_cache() -> None:
    assert parity.triton_f32("float32", None, False, "request") == "ieee"
    assert os.environ["TRITON_F32_DEFAULT"] == "ieee"
    cache = Path(os.environ["TRITON_CACHE_DIR"])
    assert cache.is_dir() and not any(cache.iterdir()) and "ieee" in cache.name


@pytest.mark.usefixtures("clean_env")
def test_session_8s_tf32_setting_can_be_asked_for() -> None:
    assert parity.triton_f32("float32", "tf32", True, "swap") == "tf32"
    assert os.environ["TRITON_F32_DEFAULT"] == "tf32"


@pytest.mark.usefixtures("clean_env")
def test_16_bit_parity_leaves_triton_alone_and_refuses_the_float32_option() -> None:
    assert parity.triton_f32("bfloat16", None, True, "request") is None
    assert "TRITON_F32_DEFAULT" not in os.environ
    with pytest.raises(SystemExit, match="float32 only"):
        parity.triton_f32("bfloat16", "ieee", False, "request")


@pytest.mark.usefixtures("clean_env")
def test_an_adapter_in_float32_needs_swap_mode() -> None:
    with pytest.raises(SystemExit, match="--lora-mode swap"):
        parity.triton_f32("float32", None, True, "request")
    assert "TRITON_F32_DEFAULT" not in os.environ
    assert parity.triton_f32("float32", None, True, "swap") == "ieee"
