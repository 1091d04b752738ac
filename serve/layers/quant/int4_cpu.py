"""PyTorch's CPU int4 weight-only matmul (`_weight_int4pack_mm_for_cpu`), and its plain reference.

Layout (checked by experiment on torch 2.13, see tests/unit/test_quant_kernels.py):
  * `_convert_weight_to_int4pack_for_cpu(codes [N, K] int32 in [0, 15], inner_k_tiles)` -> [N, K / 2]
    uint8; N must be a multiple of 16.
  * `_weight_int4pack_mm_for_cpu(x [M, K], packed, group, scale_zero [K / group, N, 2])` -> [M, N] in
    x's dtype (bf16, f16 or f32; scale_zero must have x's dtype); group in {32, 64, 128, 256} and
    K % group == 0.
  * Dequantization it performs: w[n, k] = (code - 8) * scale[g, n] + zero[g, n], g = k // group. The
    "zero" is an additive offset, not an integer zero point: an integer zero point z becomes
    zero = (8 - z) * scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KERNEL_GROUPS = (256, 128, 64, 32)


def kernel_group(in_features: int, group_size: int) -> int | None:
    """The largest kernel group that tiles both K and the checkpoint's groups exactly, or None."""
    for g in KERNEL_GROUPS:
        if in_features % g == 0 and group_size % g == 0:
            return g
    return None


def int4_supported(out_features: int, in_features: int, group_size: int, device: torch.device) -> bool:
    return device.type == "cpu" and out_features % 16 == 0 and kernel_group(in_features, group_size) is not None


@dataclass
class Int4Weight:
    """A weight repacked for the CPU int4 kernel.

    packed:     [N, K / 2] uint8 (opaque kernel layout)
    scale_zero: [K / group, N, 2] in the activation dtype
    """

    packed: torch.Tensor
    scale_zero: torch.Tensor
    group: int


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
              dtype: torch.dtype) -> Int4Weight:
    """codes [N, K] in [0, 15] with contiguous groups of `group_size` columns; scales [G, N] float;
    zeros [G, N] integer zero points (w = scale * (code - zero)) -> Int4Weight for activations of `dtype`.

    A checkpoint group larger than the kernel's is split into several kernel groups sharing its
    scale and zero, which is exact.
    """
    n, k = codes.shape
    g = kernel_group(k, group_size)
    if g is None or n % 16:
        raise ValueError(f"int4 kernel cannot take a [{n}, {k}] weight with group size {group_size}")
    ckpt_group = (torch.arange(k // g) * g) // group_size  # checkpoint group of each kernel group
    s = scales.float()[ckpt_group]
    return pack_int4_affine(codes, s, (8 - zeros.float()[ckpt_group]) * s, g, dtype)


def pack_int4_affine(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group: int,
                     dtype: torch.dtype) -> Int4Weight:
    """The kernel's own form: w = (code - 8) * scale + offset; scales/offsets [K / group, N]
    (GGUF's Q4_1 `d * q + m` is scale d, offset m + 8 d; Q4_0's `d * (q - 8)` is offset 0)."""
    n, k = codes.shape
    if group not in KERNEL_GROUPS or k % group or n % 16:
        raise ValueError(f"int4 kernel cannot take a [{n}, {k}] weight with group size {group}")
    scale_zero = torch.stack([scales.float(), offsets.float()], dim=-1).to(dtype).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    return Int4Weight(packed=packed, scale_zero=scale_zero, group=group)


def int4_matmul(x: torch.Tensor, w: Int4Weight) -> torch.Tensor:
    """x: [..., K] -> [..., N] in x's dtype."""
    lead = x.shape[:-1]
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]), w.packed, w.group, w.scale_zero)
    return y.reshape(*lead, y.shape[-1])


def int4_reference(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   group_size: int) -> torch.Tensor:
    """What `int4_matmul` computes, in float32: x @ (scale * (code - zero)).T with contiguous groups."""
    k = codes.shape[1]
    gi = torch.arange(k) // group_size
    w = scales.float()[gi].T * (codes.float() - zeros.float()[gi].T)
    return (x.float() @ w.T).to(x.dtype)
