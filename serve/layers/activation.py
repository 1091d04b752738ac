"""SwiGLU: silu(gate) * up on the output of the fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sluice_kernels import cpu as cpu_kernels


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2 * I] laid out as [gate | up] -> [T, I]."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 2 and cpu_kernels.available():
        return cpu_kernels.silu_and_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)
