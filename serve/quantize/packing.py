"""GPTQ checkpoint tensors (the layout AutoGPTQ / GPTQModel write and vLLM / transformers read).

For a linear layer with weight [N out, K in], b bits, f = 32 // b codes per int32, G groups:
    qweight [K / f, N] int32: input dim packed; code of (n, k) sits in qweight[k // f, n] at bit b * (k % f)
    qzeros  [G, N / f] int32: output dim packed; the zero of (g, n) sits in qzeros[g, n // f] at bit b * (n % f)
    scales  [G, N] float16
    g_idx   [K] int32
"v1" zero points (checkpoint_format "gptq", the default when unspecified) store zero - 1; "v2"
(gptq_v2) stores zero itself. We write v1 because every reader accepts it.
"""

from __future__ import annotations

import torch

from serve.quantize.grid import QuantizedWeight


def _pack_last_dim(values: torch.Tensor, bits: int) -> torch.Tensor:
    """values: [..., M] ints in [0, 2^bits) with M % (32 // bits) == 0 -> [..., M / f] int32."""
    f = 32 // bits
    if values.shape[-1] % f:
        raise ValueError(f"cannot pack {values.shape[-1]} values into int32 words of {f}")
    v = values.to(torch.int64).reshape(*values.shape[:-1], -1, f)
    shifts = torch.arange(f, dtype=torch.int64) * bits
    words = (v << shifts).sum(dim=-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # two's complement into int32
    return words.to(torch.int32)


def _unpack_last_dim(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `_pack_last_dim`: [..., W] int32 -> [..., W * f] int32."""
    f = 32 // bits
    shifts = torch.arange(f, dtype=torch.int64) * bits
    v = (words.to(torch.int64)[..., None] >> shifts) & ((1 << bits) - 1)
    return v.reshape(*words.shape[:-1], -1).to(torch.int32)


def pack_qweight(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N, K] -> qweight [K / f, N] int32 (packed along the input dim)."""
    return _pack_last_dim(codes.contiguous(), bits).T.contiguous()


def unpack_qweight(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """qweight [K / f, N] int32 -> codes [N, K] int32."""
    return _unpack_last_dim(qweight.T.contiguous(), bits).contiguous()


def pack_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """zeros [G, N] (true zero points) -> qzeros [G, N / f] int32 in the v1 convention (zero - 1)."""
    if int(zeros.min()) < 1:
        raise ValueError("v1 qzeros cannot hold a zero point of 0")
    return _pack_last_dim(zeros - 1, bits)


def unpack_qzeros(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """qzeros [G, N / f] int32 (v1) -> true zero points [G, N] int32."""
    return _unpack_last_dim(qzeros, bits) + 1


def to_checkpoint(qw: QuantizedWeight, bits: int) -> dict[str, torch.Tensor]:
    """The four tensors of one linear layer, by their checkpoint suffix."""
    return {
        "qweight": pack_qweight(qw.codes, bits),
        "qzeros": pack_qzeros(qw.zeros, bits),
        "scales": qw.scales.to(torch.float16),
        "g_idx": qw.g_idx.to(torch.int32),
    }


def from_checkpoint(tensors: dict[str, torch.Tensor], bits: int) -> QuantizedWeight:
    """Inverse of `to_checkpoint` (scales come back as float32 holding fp16 values)."""
    return QuantizedWeight(codes=unpack_qweight(tensors["qweight"], bits), scales=tensors["scales"].float(),
                           zeros=unpack_qzeros(tensors["qzeros"], bits), g_idx=tensors["g_idx"].to(torch.int32))
