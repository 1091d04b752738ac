"""Integer grids for weight quantization: per-group scale and zero point, quantize, dequantize.

Convention (AutoGPTQ's, which vLLM and transformers read): an unsigned b-bit code q in [0, 2^b - 1]
stands for the value scale * (q - zero). Asymmetric grids span [min(w, 0), max(w, 0)] of the group;
symmetric grids put zero at 2^(b-1) (8 for 4 bits) and scale = 2 * max|w| / (2^b - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (4, 8)


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 128  # -1: one group spanning the whole input dimension
    sym: bool = False

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.group_size != -1 and (self.group_size < 8 or self.group_size % 8):
            raise ValueError(f"group_size must be -1 or a positive multiple of 8, got {self.group_size}")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def groups(self, in_features: int) -> int:
        """Number of groups along the input dim; a trailing partial group counts (AutoGPTQ: ceil)."""
        g = self.effective_group(in_features)
        return -(-in_features // g)

    def effective_group(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size


def grid_params(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, g] float (one group of columns for every output row) -> (scale [N] f32, zero [N] int32).

    The zero point is kept in [1, maxq] for asymmetric grids: the v1 checkpoint format stores
    zero - 1 in an unsigned nibble, so a zero of 0 cannot be written.
    """
    w = w.float()
    lo = torch.clamp(w.min(dim=1).values, max=0.0)
    hi = torch.clamp(w.max(dim=1).values, min=0.0)
    if spec.sym:
        amax = torch.maximum(lo.abs(), hi)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        scale = 2 * amax / spec.maxq
        zero = torch.full_like(scale, (spec.maxq + 1) // 2, dtype=torch.int32)
        return scale, zero
    span = hi - lo
    flat = span == 0  # an all-zero group: any positive scale represents it exactly
    scale = torch.where(flat, torch.ones_like(span), span / spec.maxq)
    zero = torch.round(-lo / scale).to(torch.int32).clamp(1, spec.maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """w: [N, c] float, scale/zero: [N] -> codes [N, c] int32 in [0, maxq]."""
    q = torch.round(w.float() / scale[:, None]) + zero[:, None]
    return q.clamp(0, maxq).to(torch.int32)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """q: [N, c] int, scale/zero: [N] -> [N, c] float32."""
    return scale[:, None] * (q - zero[:, None]).float()


@dataclass
class QuantizedWeight:
    """The integer form of one [N, K] weight, columns in the checkpoint's (original) order.

    codes:  [N, K] int32 in [0, 2^bits - 1]
    scales: [G, N] float32, zeros: [G, N] int32 (per group and output row)
    g_idx:  [K] int32, the group of each input column (arange(K) // g unless act-order)
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """[N, K] float32 = scale[g_idx] * (codes - zero[g_idx])."""
        s = self.scales[self.g_idx.long()].T
        z = self.zeros[self.g_idx.long()].T
        return s * (self.codes - z).float()


def rtn_quantize(w: torch.Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Round-to-nearest baseline: each group's grid from its own min/max, no error compensation."""
    n, k = w.shape
    g = spec.effective_group(k)
    codes = torch.empty(n, k, dtype=torch.int32)
    scales, zeros = [], []
    for start in range(0, k, g):
        block = w[:, start:start + g]
        s, z = grid_params(block, spec)
        codes[:, start:start + g] = quantize_codes(block, s, z, spec.maxq)
        scales.append(s)
        zeros.append(z)
    g_idx = (torch.arange(k) // g).to(torch.int32)
    return QuantizedWeight(codes, torch.stack(scales), torch.stack(zeros), g_idx)
