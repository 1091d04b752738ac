"""The one way a quant method runs a weight through the AVX2 block kernels (kernels/sluice_kernels/cpu).

`block_kernels_here()` says whether layers being built now (on the default device) can use them;
`kernel_call(w)` binds an interleaved weight to its kernel once at load, and `run(call, x)` applies it
to x of any leading shape. The gguf, gptq and q8_0 methods share these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from serve.layers.quant.blocks import Q4x8, Q8x8

KernelCall = tuple[Callable[..., torch.Tensor], tuple[Any, ...]]


def block_kernels_here() -> bool:
    if torch.get_default_device().type != "cpu":
        return False
    from sluice_kernels import cpu

    return cpu.available()


def block_kernel_method(method: str, device: torch.device) -> bool:
    """Whether layers of quant method `method` run through the CPU block kernels on `device`."""
    if device.type != "cpu" or method not in ("gguf", "gptq", "q8_0"):
        return False
    from sluice_kernels import cpu

    return cpu.available()


def kernel_call(w: Q4x8 | Q8x8) -> KernelCall:
    from sluice_kernels import cpu

    ops = cpu.ops()  # the ISA path chosen for this CPU
    if isinstance(w, Q4x8):
        return ops.q4_linear, (w.qs, w.d, w.m, w.n)
    return ops.q8_linear, (w.qs, w.d, w.n)


def run(call: KernelCall, x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> [..., N]."""
    if x.dim() == 2:
        return call[0](x, *call[1])
    y = call[0](x.reshape(-1, x.shape[-1]), *call[1])
    return y.reshape(*x.shape[:-1], y.shape[-1])
