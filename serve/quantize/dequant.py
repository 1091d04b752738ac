"""Dequantize GPTQ checkpoint tensors to a float weight, written apart from the packer on purpose.

The packer (packing.py) shifts codes into int32 words; this reader instead looks at the words'
little-endian bytes (code j of a 4-bit word is nibble j: byte j // 2, low nibble first), so a shared
misunderstanding of the layout cannot hide in both. It is the reference the quantized matmuls are
tested against, and the fallback path for layers no kernel takes.
"""

from __future__ import annotations

import numpy as np
import torch


def _codes_from_words(words: np.ndarray, bits: int) -> np.ndarray:
    """words: [R, C] int32 -> [R, C * 32 // bits] uint8 codes, code j of word c at column c * f + j."""
    le = np.ascontiguousarray(words.astype("<i4")).view(np.uint8).reshape(words.shape[0], -1)
    if bits == 8:
        return le
    if bits != 4:
        raise ValueError(f"unsupported bits {bits}")
    out = np.empty((le.shape[0], le.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = le & 0x0F
    out[:, 1::2] = le >> 4
    return out


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    bits: int, zero_offset: int = 1) -> torch.Tensor:
    """GPTQ tensors -> weight [N out, K in] float32 = scales[g] * (code - (stored_zero + zero_offset)).

    qweight [K / f, N] int32, qzeros [G, N / f] int32, scales [G, N], g_idx [K] int;
    zero_offset is 1 for v1 checkpoints, 0 for gptq_v2.
    """
    codes = _codes_from_words(qweight.T.contiguous().numpy(), bits)  # [N, K]
    zeros = _codes_from_words(qzeros.numpy(), bits).astype(np.int32) + zero_offset  # [G, N]
    g = g_idx.numpy().astype(np.int64)
    s = scales.float().numpy()
    w = s[g].T * (codes.astype(np.float32) - zeros[g].T.astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(w))
