"""W8A8 dynamic: int8 weights per output channel, int8 activations quantized per call (fbgemm).

Why this is the CPU default on hosts without native bf16 (AVX2-only x86): a decode step at small
batch is bound by reading weights, and fbgemm's int8 GEMM (u8 x s8 -> s32 with AVX2 `vpmaddubsw`)
reads a quarter of float32's bytes and computes in integer SIMD. Measured here on [1, 576] x
[576, 3072]: 95 us vs 269 us for f32 `F.linear`, 137 us for the int4 kernel with bf16 activations;
the vocab projection [1, 576] x [576, 49152]: 1.0 ms vs 10.2 ms for f32.

Numerics (both paths below compute the same thing):
  * weights: symmetric per output row, scale[n] = max|W[n, :]| / 127, codes in [-127, 127];
  * activations: per token (each row divided by its max|x| so fbgemm's per-tensor grid fits every
    row), asymmetric uint8 with torch's dynamic quantization parameters and `reduce_range` (7-bit
    range, 0..127), which keeps AVX2's 16-bit pairwise accumulation from saturating;
  * the MLP down projection, whose inputs carry outlier channels, keeps bf16 activations
    (`int8_bf16act`, via the role overrides registered below);
  * output: float32 (cast back to the activation dtype).
`w8a8_reference` fake-quantizes the activations with the same parameters, dequantizes the weights
and calls F.linear; it runs on any device and is what the kernel is tested against.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from serve.layers.quant.base import register_quant_method, register_role_overrides
from serve.layers.quant.int8 import Int8ReferenceMethod, quantize_int8

REDUCE_RANGE = True  # fbgemm's default for dynamic linear on x86; 8-bit activations saturate AVX2 pair sums


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines or "x86" in torch.backends.quantized.supported_engines


def prepack(codes: torch.Tensor, scales: torch.Tensor) -> object:
    """codes [N, K] int8, scales [N] -> fbgemm's packed weight (an opaque torch script object)."""
    with warnings.catch_warnings():
        # Quantized-tensor constructors are flagged deprecated in torch 2.13; the fbgemm op we call
        # still takes them and torch is pinned, so the warning is noise at every load.
        warnings.simplefilter("ignore", UserWarning)
        q = torch._make_per_channel_quantized_tensor(codes, scales.double(),
                                                      torch.zeros(codes.shape[0], dtype=torch.int64), 0)
        return torch.ops.quantized.linear_prepack(q, None)


def fake_quant_activations(x: torch.Tensor) -> torch.Tensor:
    """x: [M, K] -> x rounded to the uint8 grid fbgemm's dynamic linear picks for it (float32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor_dynamic(x.float().contiguous(), torch.quint8, REDUCE_RANGE).dequantize()


class W8A8ReferenceMethod(Int8ReferenceMethod):
    name = "w8a8_reference"

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2, row_scale = _rows_to_unit_range(x.reshape(-1, x.shape[-1]).float())
        xq = fake_quant_activations(x2)
        w = layer.codes.float() * layer.scales.float()[:, None]
        return _unscale(F.linear(xq, w), row_scale).to(x.dtype).reshape(*lead, -1)


def _rows_to_unit_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token activation quantization through a per-tensor kernel: rows divided by their own max|x|
    share one range, so the per-tensor grid fits every token (one outlier token no longer flattens
    the others: per-tensor over a 512-token prefill took KJV perplexity from 15.3 to 41). The matmul
    is linear, so the output rows are multiplied back. A single row needs no rescaling."""
    if x.shape[0] == 1:
        return x, None
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12)
    return x / scale, scale


def _unscale(y: torch.Tensor, row_scale: torch.Tensor | None) -> torch.Tensor:
    return y if row_scale is None else y.mul_(row_scale)


class W8A8Method(W8A8ReferenceMethod):
    name = "w8a8"

    def finalize(self, layer: nn.Module) -> None:
        if layer._staging.device.type != "cpu" or not fbgemm_available():
            super().finalize(layer)  # keep codes/scales: the reference path serves other devices
            layer._packed = None
            return
        codes, scales = quantize_int8(layer._staging)
        del layer._staging
        # Only fbgemm's packed copy is kept: one byte per weight in memory, nothing else.
        layer._packed = prepack(codes, scales)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if layer._packed is None:
            return super().apply(layer, x)
        lead = x.shape[:-1]
        x2, row_scale = _rows_to_unit_range(x.reshape(-1, x.shape[-1]).float())
        y = torch.ops.quantized.linear_dynamic(x2, layer._packed, REDUCE_RANGE)
        return _unscale(y, row_scale).to(x.dtype).reshape(*lead, -1)


class Int8Bf16ActMethod(Int8ReferenceMethod):
    """int8 weights, activations rounded to bf16 for `_weight_int8pack_mm` (its AVX2 fast path; with
    float32 activations the same op is 10x slower). For layers whose inputs carry outlier channels
    that 7-bit activations would crush: the W8A8 scheme uses it for the MLP down projection."""

    name = "int8_bf16act"

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xb = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if x.device.type != "cpu":
            return F.linear(xb.float(), layer.codes.float() * layer.scales.float()[:, None]).to(x.dtype)
        y = torch.ops.aten._weight_int8pack_mm(xb, layer.codes, layer.scales.to(torch.bfloat16))
        return y.to(x.dtype).reshape(*lead, -1)


# Layer roles whose inputs have outlier channels (the SwiGLU product feeding down_proj reaches 40x
# the typical magnitude here): W8A8 keeps their activations in bf16 instead of 7-bit integers.
# KJV perplexity, f32 14.69: all layers W8A8 per token 15.29; down_proj as int8_bf16act 14.87.
_W8A8_ROLES = {"down_proj": "int8_bf16act", "lm_head": "int8_bf16act"}


register_quant_method("w8a8", W8A8Method)
register_quant_method("w8a8_reference", W8A8ReferenceMethod)
register_quant_method("int8_bf16act", Int8Bf16ActMethod)
register_role_overrides("w8a8", _W8A8_ROLES)
register_role_overrides("w8a8_reference", _W8A8_ROLES)
