"""Triton GPTQ dequant-GEMM == the independent plain-PyTorch dequantizer, run on CPU by Triton's interpreter.

Checkpoint tensors are made by our packer (the one `sluice quantize` uses); the reference reads them
with serve/quantize/dequant.py, which decodes the words byte-wise, independently of the packer. The
reference multiplies in fp32 with the weight rounded to the activation dtype (what the kernel feeds
its dot), so the tolerance only covers summation order and the output's rounding.
"""

from __future__ import annotations

import pytest
import torch
from sluice_kernels import triton_gptq
from sluice_kernels.triton_gptq import gptq_matmul
from torch import nn

from serve.layers.quant.gptq import GPTQReferenceMethod, GPTQShard
from serve.quantize.dequant import dequantize_gptq
from serve.quantize.packing import pack_qweight, pack_qzeros

# Output rounding of each dtype, relative to the output's magnitude.
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_shard(n: int, k: int, group: int, seed: int, act_order: bool = False, zero_offset: int = 1) -> GPTQShard:
    """Random 4-bit codes / zero points / fp16 scales packed as a GPTQ checkpoint holds them."""
    gen = torch.Generator().manual_seed(seed)
    groups = (k + group - 1) // group
    codes = torch.randint(0, 16, (n, k), generator=gen)
    zeros = torch.randint(1, 16, (groups, n), generator=gen)
    scales = (torch.rand(groups, n, generator=gen) * 0.05 + 0.005).half()
    g_idx = (torch.arange(k) // group).to(torch.int32)
    if act_order:  # desc_act checkpoints: input columns visit the groups in a shuffled order
        g_idx = g_idx[torch.randperm(k, generator=gen)]
    qzeros = pack_qzeros(zeros, 4) if zero_offset == 1 else pack_qzeros(zeros + 1, 4)
    return GPTQShard(pack_qweight(codes, 4), qzeros, scales, g_idx, bits=4, group_size=group, zero_offset=zero_offset)


def reference(x: torch.Tensor, s: GPTQShard) -> torch.Tensor:
    w = dequantize_gptq(s.qweight, s.qzeros, s.scales, s.g_idx, s.bits, s.zero_offset)  # [N, K] fp32
    return x.float() @ w.to(x.dtype).float().T


def assert_close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert y.dtype == dtype and y.shape == ref.shape
    err = float((y.float() - ref).abs().max())
    assert err <= RTOL[dtype] * float(ref.abs().max()) + 1e-6, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_matches_dequant_reference(dtype: torch.dtype, m: int) -> None:
    s = make_shard(n=96, k=256, group=64, seed=m)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(7)).to(dtype)
    assert_close(gptq_matmul(x, s.qweight, s.qzeros, s.scales, s.g_idx), reference(x, s), dtype)


@pytest.mark.parametrize("act_order,zero_offset", [(True, 1), (False, 0)])
def test_act_order_and_v2_zeros(act_order: bool, zero_offset: int) -> None:
    s = make_shard(n=64, k=128, group=32, seed=3, act_order=act_order, zero_offset=zero_offset)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(8)).half()
    y = gptq_matmul(x, s.qweight, s.qzeros, s.scales, s.g_idx, zero_offset=zero_offset)
    assert_close(y, reference(x, s), torch.float16)


def test_ragged_tiles_and_leading_dims() -> None:
    """K = 200 and N = 40 are not multiples of the tiles; group 40 is not a power of two; x is 3-D."""
    s = make_shard(n=40, k=200, group=40, seed=4)
    x = torch.randn(2, 9, 200, generator=torch.Generator().manual_seed(9))
    y = gptq_matmul(x, s.qweight, s.qzeros, s.scales, s.g_idx)
    assert y.shape == (2, 9, 40)
    assert_close(y.reshape(18, 40), reference(x.reshape(18, 200), s), torch.float32)


def test_bad_inputs_raise_clear_errors() -> None:
    s = make_shard(n=64, k=128, group=32, seed=5)
    with pytest.raises(ValueError, match="input features"):
        gptq_matmul(torch.randn(2, 100), s.qweight, s.qzeros, s.scales, s.g_idx)
    with pytest.raises(ValueError, match="int32"):
        gptq_matmul(torch.randn(2, 128), s.qweight.float(), s.qzeros, s.scales, s.g_idx)
    with pytest.raises(ValueError, match="g_idx"):
        gptq_matmul(torch.randn(2, 128), s.qweight, s.qzeros, s.scales, s.g_idx[:64])
    with pytest.raises(ValueError, match="fp16, bf16 or fp32"):
        gptq_matmul(torch.randn(2, 128).double(), s.qweight, s.qzeros, s.scales, s.g_idx)


def _reference_layer(parts: list[GPTQShard], k: int) -> nn.Module:
    method, layer = GPTQReferenceMethod(), nn.Module()
    method.create_weights(layer, k, sum(p.qweight.shape[1] for p in parts), torch.float32)
    row = 0
    for p in parts:
        method.load_rows(layer, p, row)
        row += p.qweight.shape[1]
    method.finalize(layer)
    return layer


def test_hook_fuses_shards_like_the_reference_method() -> None:
    """attach/apply (what GPTQMethod calls on CUDA) on a fused QKV-like layer == GPTQReferenceMethod."""
    parts = [make_shard(n=n, k=128, group=32, seed=10 + i, act_order=True) for i, n in enumerate((64, 32, 32))]
    parts = [GPTQShard(p.qweight, p.qzeros, p.scales, parts[0].g_idx, 4, 32) for p in parts]  # one g_idx per layer
    layer = nn.Module()
    assert triton_gptq.attach(layer, parts, 128)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(11))
    ref = GPTQReferenceMethod().apply(_reference_layer(parts, 128), x)
    assert_close(triton_gptq.apply(layer, x), ref, torch.float32)


def test_hook_declines_what_the_kernel_cannot_take() -> None:
    a, b = make_shard(n=64, k=128, group=32, seed=12, act_order=True), make_shard(n=64, k=128, group=32, seed=13)
    assert not triton_gptq.attach(nn.Module(), [a, b], 128)  # different g_idx
    eight_bit = GPTQShard(a.qweight, a.qzeros, a.scales, a.g_idx, bits=8, group_size=32)
    layer = nn.Module()
    assert not triton_gptq.attach(layer, [eight_bit], 64) and not hasattr(layer, "gptq_packed")
