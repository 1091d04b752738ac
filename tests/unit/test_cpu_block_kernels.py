"""CPU block kernels (kernels/sluice_kernels/cpu), every ISA path this CPU runs, == a float64 reference of the same arithmetic.

The kernels quantize each activation row to int8 in 32-blocks (scale = max|x| / 127, round half to
even) and dot it with 4-bit (w = d * q + m) or 8-bit (w = d * q) weight blocks, laid out 8 rows
interleaved by `interleave`. The reference below works on the plain blocks in float64, so it checks
the interleaving as well: the kernels must agree to float32 rounding. A second check bounds the
distance to the unquantized product x @ W.T.
"""

from __future__ import annotations

import pytest
import torch
from sluice_kernels import cpu

from serve.layers.quant.blocks import QK, Q4Blocks, Q8Blocks, interleave, quantize_q8
from tests.requirements import kernels_missing, requires

pytestmark = requires("kernels", kernels_missing())


@pytest.fixture(autouse=True)
def _every_isa_path(isa_path: str) -> str:
    """Every test below runs once per ISA path this CPU supports (tests/unit/conftest.py)."""
    return isa_path


def test_kernels_build_where_they_can_run() -> None:
    assert cpu.available()


def _quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> codes [M, K/32, 32] float64, scales [M, K/32] float64 (the kernels' rule)."""
    blocks = x.float().reshape(x.shape[0], -1, QK)
    amax = blocks.abs().amax(dim=2)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    codes = torch.round(blocks * inv[..., None])  # torch.round: half to even, like nearbyint
    return codes.double(), (amax / 127.0).double()


def _reference_q4(x: torch.Tensor, w: Q4Blocks) -> torch.Tensor:
    xq, xs = _quantize_activations(x)
    q = torch.cat([w.qs & 0x0F, w.qs >> 4], dim=2).double()  # [N, nb, 32]
    dots = torch.einsum("mbk,nbk->mnb", xq, q)
    d, m = w.d.double(), w.m.double()
    return (dots * xs[:, None, :] * d[None]).sum(-1) + (xq.sum(-1) * xs) @ m.T


def _reference_q8(x: torch.Tensor, w: Q8Blocks) -> torch.Tensor:
    xq, xs = _quantize_activations(x)
    q = w.qs.double().reshape(w.qs.shape[0], -1, QK)
    return (torch.einsum("mbk,nbk->mnb", xq, q) * xs[:, None, :] * w.d.double()[None]).sum(-1)


def q4(x: torch.Tensor, w: Q4Blocks) -> torch.Tensor:
    p = interleave(w)
    return cpu.q4_linear(x, p.qs, p.d, p.m, p.n)


def q8(x: torch.Tensor, w: Q8Blocks) -> torch.Tensor:
    p = interleave(w)
    return cpu.q8_linear(x, p.qs, p.d, p.n)


def _random_q4(n: int, k: int, gen: torch.Generator) -> Q4Blocks:
    qs = torch.randint(0, 256, (n, k // QK, 16), dtype=torch.uint8, generator=gen)
    d = (torch.rand(n, k // QK, generator=gen) * 0.02 + 0.001).half()
    m = (torch.randn(n, k // QK, generator=gen) * 0.05).half()
    return Q4Blocks(qs, d, m)


# (M, N, K): N not a multiple of 8 pads the last row group; 608 = 19 blocks
SHAPES = [(1, 1, 32), (3, 5, 64), (1, 64, 576), (33, 577, 608), (4, 96, 1536), (2, 13, 96)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_q4_matches_reference(m: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    w = _random_q4(n, k, gen)
    x = torch.randn(m, k, generator=gen)
    y = q4(x, w)
    ref = _reference_q4(x, w)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    # and the int8 activations cost little against the unquantized product
    exact = x @ w.dequantize().T
    assert float((y - exact).norm() / exact.norm()) < 0.02


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_q8_matches_reference(m: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(7 * m + n + k)
    w = quantize_q8(torch.randn(n, k, generator=gen))
    x = torch.randn(m, k, generator=gen)
    y = q8(x, w)
    ref = _reference_q8(x, w)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    exact = x @ w.dequantize().T
    assert float((y - exact).norm() / exact.norm()) < 0.02


def test_bf16_activations_give_bf16_rows_of_the_same_product() -> None:
    gen = torch.Generator().manual_seed(3)
    w = _random_q4(64, 576, gen)
    x = torch.randn(5, 576, generator=gen).bfloat16()
    y = q4(x, w)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), _reference_q4(x.float(), w).float(), rtol=1e-2, atol=1e-2)


def test_every_thread_count_gives_the_same_bits() -> None:
    gen = torch.Generator().manual_seed(4)
    w = _random_q4(1000, 576, gen)
    x = torch.randn(7, 576, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = q4(x, w)
        torch.set_num_threads(2)
        two = q4(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_zero_rows_and_zero_blocks_are_exact() -> None:
    w = quantize_q8(torch.zeros(8, 64))
    y = q8(torch.zeros(2, 64), w)
    assert torch.equal(y, torch.zeros(2, 8))


def test_bad_shapes_raise_clear_errors() -> None:
    w = interleave(_random_q4(8, 64, torch.Generator().manual_seed(0)))
    with pytest.raises(RuntimeError, match="x has K=96, weight has K=64"):
        cpu.q4_linear(torch.randn(1, 96), w.qs, w.d, w.m, w.n)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        cpu.q4_linear(torch.randn(1, 64).half(), w.qs, w.d, w.m, w.n)
    with pytest.raises(RuntimeError, match="d must be contiguous Half"):
        cpu.q4_linear(torch.randn(1, 64), w.qs, w.d.float(), w.m, w.n)
    with pytest.raises(RuntimeError, match="n=17 does not match 1 row groups"):
        cpu.q4_linear(torch.randn(1, 64), w.qs, w.d, w.m, 17)
    w8 = interleave(quantize_q8(torch.randn(8, 64)))
    with pytest.raises(RuntimeError, match="qs must be contiguous Char"):
        cpu.q8_linear(torch.randn(1, 64), w8.qs.view(torch.uint8), w8.d, w8.n)


def test_interleaving_keeps_every_weight() -> None:
    """Interleave, then read the layout back as documented in quant_linear.cpp: the same codes."""
    w = _random_q4(11, 64, torch.Generator().manual_seed(9))
    p = interleave(w)
    lo, hi = p.qs & 0x0F, p.qs >> 4  # [G, nb, 128]: vector k, byte 4r + t
    g, nb = p.qs.shape[:2]
    chunks = torch.cat([lo.reshape(g, nb, 4, 8, 4), hi.reshape(g, nb, 4, 8, 4)], dim=2)  # [G, nb, c, r, t]
    codes = chunks.permute(0, 3, 1, 2, 4).reshape(g * 8, nb * QK)[:11]
    assert torch.equal(codes, w.codes())
    assert torch.equal(p.d.permute(0, 2, 1).reshape(-1, nb)[:11], w.d)


def test_fused_rotary_in_place_on_a_strided_view_matches_apply_rotary() -> None:
    from serve.layers.rotary import RotaryEmbedding, apply_rotary, apply_rotary_
    from serve.models.config import RopeScaling

    rope = RotaryEmbedding(64, 128, 10000.0, RopeScaling())
    cos, sin = rope.lookup(torch.tensor([0, 5, 77]), torch.float32)
    qkv = torch.randn(3, 15 * 64, generator=torch.Generator().manual_seed(1))
    v_before = qkv[:, 12 * 64:].clone()
    expected = apply_rotary(qkv[:, :12 * 64].reshape(3, 12, 64), cos, sin)
    out = apply_rotary_(qkv[:, :12 * 64].view(3, 12, 64), cos, sin)
    assert out.data_ptr() == qkv.data_ptr()  # in place
    torch.testing.assert_close(qkv[:, :12 * 64].view(3, 12, 64), expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(qkv[:, 12 * 64:], v_before)  # V heads untouched


def test_fused_norm_and_swiglu_match_the_aten_formulas() -> None:
    gen = torch.Generator().manual_seed(2)
    x, r, w = torch.randn(5, 576, generator=gen), torch.randn(5, 576, generator=gen), torch.randn(576, generator=gen)
    out, total = cpu.add_rms_norm(x, r, w, 1e-5)
    s = x + r
    torch.testing.assert_close(total, s)
    torch.testing.assert_close(out, w * (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5)), atol=1e-5, rtol=1e-5)
    out, same = cpu.add_rms_norm(x, None, w, 1e-5)
    assert same.data_ptr() == x.data_ptr()
    g = torch.randn(3, 2 * 1536, generator=gen)
    torch.testing.assert_close(cpu.silu_and_mul(g), torch.nn.functional.silu(g[:, :1536]) * g[:, 1536:], atol=1e-6,
                               rtol=1e-5)


@pytest.mark.parametrize("kernels", [True, False], ids=["avx2-blocks", "dequantized-reference"])
def test_q8_0_method_quantizes_float_rows_at_load(kernels: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve.layers.linear import Linear
    from serve.layers.quant import q8_0
    from serve.layers.quant.base import get_quant_method

    if not kernels:
        monkeypatch.setattr(q8_0, "block_kernels_here", lambda: False)
    gen = torch.Generator().manual_seed(11)
    a, b = torch.randn(24, 96, generator=gen), torch.randn(40, 96, generator=gen)
    layer = Linear(96, [24, 40], get_quant_method("q8_0"), torch.float32)
    layer.load_shard(0, a)
    layer.load_shard(1, b)
    layer.finalize()
    assert hasattr(layer, "block_call") == kernels
    x = torch.randn(3, 96, generator=gen)
    w = quantize_q8(torch.cat([a, b]))
    y = layer(x)
    if kernels:
        torch.testing.assert_close(y.double(), _reference_q8(x, w), rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(y, x @ w.dequantize().T, rtol=1e-5, atol=1e-5)
    assert float((y - x @ torch.cat([a, b]).T).norm() / (x @ torch.cat([a, b]).T).norm()) < 0.02


def test_ninja_is_found_without_an_activated_venv(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """`.venv/bin/python -m ...` does not put .venv/bin on PATH; the pinned ninja must still be found."""
    import shutil

    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("ninja") is None
    assert cpu._ninja_on_path() and shutil.which("ninja") is not None
