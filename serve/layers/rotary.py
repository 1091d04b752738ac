"""Rotary position embedding, "rotate_half" layout (HF convention): dims i and i + D/2 rotate together.

cos/sin are tabulated once for every position up to the context limit (float32, as HF computes them)
and looked up per step, not per layer: `lookup(positions)` runs once per forward.
"""

from __future__ import annotations

import math

import torch
from sluice_kernels import cpu as cpu_kernels
from torch import nn

from serve.models.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """[head_dim / 2] float32 angular frequencies, with Llama-3 / linear scaling applied."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind == "llama3":
        return _llama3_scale(inv, scaling)
    return inv


def _llama3_scale(inv: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended smoothly.
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling,
                 freq_factors: torch.Tensor | None = None) -> None:
        super().__init__()
        inv = inverse_frequencies(head_dim, theta, scaling)
        if freq_factors is not None:  # GGUF `rope_freqs`: llama.cpp's per-dimension frequency divisors
            inv = inv / freq_factors.float()
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv)
        self.register_buffer("cos", angles.cos(), persistent=False)  # [max_positions, D/2]
        self.register_buffer("sin", angles.sin(), persistent=False)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] int64 -> (cos, signed_sin), each [T, 1, D] in `dtype`, ready to broadcast over
        heads. signed_sin = [-sin | sin], so that rotate_half(x) * sin == roll(x, D/2) * signed_sin."""
        cos = self.cos.index_select(0, positions)
        sin = self.sin.index_select(0, positions)
        return torch.cat((cos, cos), -1).unsqueeze(1).to(dtype), torch.cat((-sin, sin), -1).unsqueeze(1).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; cos, signed_sin: [T, 1, D] from `lookup`. Returns x * cos + rotate_half(x) * sin
    (HF formula), written as one roll and one fused multiply-add: 3 kernels instead of 7 per call,
    and callers rotate Q and K heads together in one call."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


def apply_rotary_(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` in place (x may be a strided view, e.g. the Q and K heads of a fused QKV output):
    one C++ pass for float32 on CPU instead of three kernels and a copy."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.stride(-1) == 1 and cpu_kernels.available():
        return cpu_kernels.rotary_(x, cos, signed_sin)
    return x.copy_(apply_rotary(x, cos, signed_sin))
