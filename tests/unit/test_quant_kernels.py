"""Quantized matmuls == their plain-PyTorch references.

Tolerances: the int4 kernel accumulates in float32 but takes bf16 activations and bf16 scale/offset
pairs, and its bf16 output is rounded once, so it is compared with the float32 reference at a
relative error (max abs error / max abs output) of 2e-2 in bf16 and 1e-4 in float32. The int8
kernel is compared the same way.
"""

from __future__ import annotations

import pytest
import torch

from serve.layers.linear import Linear
from serve.layers.quant.base import get_quant_method
from serve.layers.quant.gptq import GPTQShard
from serve.layers.quant.int4_cpu import int4_matmul, int4_reference, kernel_group, pack_int4
from serve.layers.quant.int8 import quantize_int8
from serve.quantize.gptq import GPTQOptions, HessianAccumulator, gptq_quantize
from serve.quantize.grid import QuantSpec, rtn_quantize
from serve.quantize.packing import to_checkpoint

TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int4_kernel_matches_reference(group: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(group)
    n, k = 48, 512
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    scales = torch.rand(k // group, n, generator=g) * 0.02 + 0.001
    zeros = torch.randint(1, 16, (k // group, n), generator=g, dtype=torch.int32)
    x = torch.randn(5, k, generator=g).to(dtype)
    w = pack_int4(codes, scales, zeros, group, dtype)
    ref = int4_reference(x.float(), codes, scales.to(dtype).float(), zeros, group)
    assert _rel_err(int4_matmul(x, w), ref) < TOL[dtype]


def test_large_checkpoint_group_splits_exactly() -> None:
    """group 128 on K = 576 (not a multiple of 128) runs as kernel group 64 with repeated scales."""
    assert kernel_group(576, 128) == 64 and kernel_group(1536, 128) == 128 and kernel_group(576, 48) is None
    qw = rtn_quantize(torch.randn(32, 576), QuantSpec(4, 128))
    x = torch.randn(3, 576)
    w = pack_int4(qw.codes, qw.scales, qw.zeros, 128, torch.float32)
    assert w.group == 64
    ref = x @ qw.dequantize().T
    assert _rel_err(int4_matmul(x, w), ref) < TOL[torch.float32]


def _gptq_shards(n_sizes: list[int], k: int, act_order: bool, bits: int = 4) -> tuple[list[GPTQShard], torch.Tensor]:
    """Shards quantized from one shared Hessian (as q/k/v are), and the stacked float weight."""
    torch.manual_seed(7)
    x = torch.randn(1024, k) * torch.linspace(0.1, 2.0, k)[torch.randperm(k)]
    acc = HessianAccumulator(k)
    acc.add(x)
    shards, dense = [], []
    for n in n_sizes:
        qw = gptq_quantize(torch.randn(n, k) * 0.05, acc.h, QuantSpec(bits, 64), GPTQOptions(act_order=act_order))
        t = to_checkpoint(qw, bits)
        shards.append(GPTQShard(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, 64))
        dense.append(qw.dequantize())
    return shards, torch.cat(dense)


def _linear(method: str, shards: list[GPTQShard], k: int, dtype: torch.dtype) -> Linear:
    layer = Linear(k, [s.shape[0] for s in shards], get_quant_method(method), dtype)
    for i, s in enumerate(shards):
        layer.load_shard(i, s)
    layer.finalize()
    return layer


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gptq_method_matches_reference_on_fused_layer(act_order: bool, dtype: torch.dtype,
                                                      cpu_int4_kernel: str) -> None:
    k = 256
    shards, _ = _gptq_shards([64, 32, 32], k, act_order)
    fast, ref = _linear("gptq", shards, k, dtype), _linear("gptq_reference", shards, k, torch.float32)
    kernel = "block_call" if cpu_int4_kernel == "avx2-blocks" else "int4"
    assert hasattr(fast, kernel) and (fast.input_perm is not None) == act_order
    x = torch.randn(7, k)
    # the block kernel rounds activations to int8 per 32-block: ~0.5% of the output's range
    tol = TOL[dtype] if kernel == "int4" else max(TOL[dtype], 2e-2)
    assert _rel_err(fast(x.to(dtype)), ref(x)) < tol


def test_gptq_reference_equals_quantizer_dequantization() -> None:
    shards, dense = _gptq_shards([32, 16], 128, act_order=True)
    ref = _linear("gptq_reference", shards, 128, torch.float32)
    torch.testing.assert_close(ref.weight, dense, rtol=2e-3, atol=1e-5)  # fp16 scales in the checkpoint


def test_gptq_without_kernel_falls_back_to_dequantized() -> None:
    shards, dense = _gptq_shards([24], 128, act_order=False, bits=8)  # 8 bits: no int4 kernel
    layer = _linear("gptq", shards, 128, torch.float32)
    assert not hasattr(layer, "int4")
    torch.testing.assert_close(layer.weight, dense, rtol=2e-3, atol=1e-5)


def test_gptq_shapes_are_checked() -> None:
    shards, _ = _gptq_shards([32], 128, act_order=False)
    layer = Linear(128, [64], get_quant_method("gptq"), torch.float32)
    with pytest.raises(ValueError, match="shard 0 expects shape"):
        layer.load_shard(0, shards[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_method_matches_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    w = torch.randn(96, 192) * 0.05
    layers = {}
    for method in ("int8", "int8_reference"):
        layer = Linear(192, [64, 32], get_quant_method(method), dtype)
        layer.load_shard(0, w[:64])
        layer.load_shard(1, w[64:])
        layer.finalize()
        layers[method] = layer
    x = torch.randn(4, 192).to(dtype)
    assert _rel_err(layers["int8"](x), layers["int8_reference"](x.float().to(dtype))) < TOL[dtype]
    codes, scales = quantize_int8(w)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127
    assert float((codes.float() * scales[:, None] - w).abs().max()) <= float(scales.max()) / 2 + 1e-7
