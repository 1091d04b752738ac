"""SwiGLU: silu(gate) * up on the output of the fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from serve.layers.norm import _fused_cpu as _fused_norm_ready


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2 * I] laid out as [gate | up] -> [T, I]."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2 and _fused_norm_ready():
        from serve.kernels import cpu

        return cpu.silu_and_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)
