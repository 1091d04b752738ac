"""The GPTQ quant method's door to the Triton dequant-GEMM; importing this never imports Triton.

serve/layers/quant/gptq.py calls `attach` at finalize on CUDA and `apply` for CUDA activations.
Without the triton package (an optional extra) `attach` declines, and the layer keeps the
dequantized-weight fallback.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def attach(layer: nn.Module, parts: list[Any], out_features: int) -> bool:
    """Keep the layer's GPTQ shards packed for the kernel; False when it cannot take them."""
    try:
        from sluice_kernels import triton_gptq
    except ImportError:
        log.info("triton is not installed; GPTQ layers on CUDA use dequantized weights")
        return False
    return triton_gptq.attach(layer, parts, out_features)


def apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> [..., N] for a layer `attach` accepted."""
    from sluice_kernels import triton_gptq

    return triton_gptq.apply(layer, x)
