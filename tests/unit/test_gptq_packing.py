"""GPTQ checkpoint packing: round trips, a hand-computed word, and the independent dequantizer."""

from __future__ import annotations

import pytest
import torch

from serve.quantize.dequant import dequantize_gptq
from serve.quantize.gptq import GPTQOptions, HessianAccumulator, gptq_quantize
from serve.quantize.grid import QuantizedWeight, QuantSpec, rtn_quantize
from serve.quantize.packing import (
    from_checkpoint,
    pack_qweight,
    pack_qzeros,
    to_checkpoint,
    unpack_qweight,
    unpack_qzeros,
)


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits: int) -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1 << bits, (48, 64), generator=g, dtype=torch.int32)
    qweight = pack_qweight(codes, bits)
    assert qweight.shape == (64 * bits // 32, 48) and qweight.dtype == torch.int32
    assert torch.equal(unpack_qweight(qweight, bits), codes)
    zeros = torch.randint(1, 1 << bits, (4, 48), generator=g, dtype=torch.int32)
    qzeros = pack_qzeros(zeros, bits)
    assert qzeros.shape == (4, 48 * bits // 32)
    assert torch.equal(unpack_qzeros(qzeros, bits), zeros)


def test_known_word_layout() -> None:
    """Input column k of output row n is nibble k % 8 of qweight[k // 8, n], lowest nibble first;
    v1 zeros store zero - 1."""
    codes = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [15, 14, 13, 12, 11, 10, 9, 8]], dtype=torch.int32)
    qweight = pack_qweight(codes, 4)
    assert qweight.shape == (1, 2)
    assert int(qweight[0, 0]) == 0x76543210
    assert int(qweight[0, 1]) == 0x89ABCDEF - (1 << 32)  # top bit set: negative as int32
    zeros = torch.full((1, 8), 8, dtype=torch.int32)
    assert int(pack_qzeros(zeros, 4)[0, 0]) == 0x77777777  # the familiar symmetric 4-bit qzeros


def test_zero_point_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="zero point of 0"):
        pack_qzeros(torch.zeros(1, 8, dtype=torch.int32), 4)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,sym", [(4, False), (4, True), (8, True)])
def test_independent_dequantizer_reproduces_quantized_weight(bits: int, sym: bool, act_order: bool) -> None:
    torch.manual_seed(1)
    k, n = 128, 32
    x = torch.randn(512, k) * torch.linspace(0.2, 2.0, k)
    acc = HessianAccumulator(k)
    acc.add(x)
    spec = QuantSpec(bits, 32, sym)
    qw = gptq_quantize(torch.randn(n, k) * 0.1, acc.h, spec, GPTQOptions(act_order=act_order))
    t = to_checkpoint(qw, bits)
    assert t["scales"].dtype == torch.float16 and t["g_idx"].dtype == torch.int32
    w = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits)
    # the checkpoint stores fp16 scales: compare with the same rounding applied to the source
    expected = QuantizedWeight(qw.codes, qw.scales.half().float(), qw.zeros, qw.g_idx).dequantize()
    torch.testing.assert_close(w, expected, rtol=0, atol=0)
    back = from_checkpoint(t, bits)
    assert torch.equal(back.codes, qw.codes) and torch.equal(back.zeros, qw.zeros)


def test_partial_last_group_round_trip() -> None:
    """K = 576 with group 128 (SmolLM2's hidden size): 5 groups, the last one 64 columns wide."""
    w = torch.randn(16, 576)
    qw = rtn_quantize(w, QuantSpec(4, 128))
    assert qw.scales.shape == (5, 16) and int(qw.g_idx.max()) == 4
    t = to_checkpoint(qw, 4)
    w2 = dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4)
    torch.testing.assert_close(w2, QuantizedWeight(qw.codes, qw.scales.half().float(), qw.zeros, qw.g_idx).dequantize(),
                               rtol=0, atol=0)
