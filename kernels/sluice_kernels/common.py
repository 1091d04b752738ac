"""What every Triton kernel here shares: how to tell the interpreter from a real compile, and the
dtype its tl.dot runs in.

Triton 3.9's CPU interpreter stores bf16 as raw uint16 bits and its tl.dot multiplies those bits
as integers, so a bf16 dot is garbage there (fp16 and fp32 are fine). Under the interpreter a bf16
dot therefore runs in fp32: bf16 -> fp32 is exact and a product of two bf16 values (8-bit
significands) is exact in fp32, so this equals a bf16 MMA with fp32 accumulation up to summation
order. Compiled kernels keep the bf16 tensor-core dot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def interpreting(kernel: object) -> bool:
    """True when `kernel` was decorated under TRITON_INTERPRET=1 (runs in numpy on the host)."""
    return not isinstance(kernel, triton.runtime.JITFunction)


def dot_config(dtype: torch.dtype, interpreted: bool) -> tuple[tl.dtype, str | None]:
    """(dtype tl.dot inputs are cast to, input_precision) for activations of `dtype`.

    fp32 activations use exact "ieee" products rather than TF32 so the kernel matches the fp32
    reference; 16-bit inputs leave the precision to the target's default (None).
    """
    if dtype not in _TL_DTYPE:
        raise ValueError(f"unsupported activation dtype {dtype}")
    if interpreted and dtype == torch.bfloat16:
        return tl.float32, "ieee"
    return _TL_DTYPE[dtype], "ieee" if dtype == torch.float32 else None
