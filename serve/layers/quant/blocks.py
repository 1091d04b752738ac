"""Weights in 32-weight blocks, and the 8-row interleaved form the AVX2 CPU kernels read.

`Q4Blocks`: w = d * q + m, q in [0, 15], 16 bytes per block with element j in the low nibble of byte
j and element j + 16 in its high nibble (ggml's Q4_0 / Q4_1 byte order). `Q8Blocks`: w = d * q,
q in [-127, 127] (ggml's Q8_0). Scales are float16, one per block, as in GGUF, so a GGUF tensor
becomes one of these without touching its codes. Each has `dequantize()`, the plain-PyTorch
reference the kernels are tested against, and `cat` for fused (QKV, gate/up) layers.
`interleave` lays them out for kernels/sluice_kernels/cpu/quant_linear.cpp (8 rows side by side per block).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

QK = 32


@dataclass(frozen=True)
class Q4Blocks:
    qs: torch.Tensor  # [N, K / 32, 16] uint8
    d: torch.Tensor  # [N, K / 32] float16
    m: torch.Tensor  # [N, K / 32] float16

    @property
    def shape(self) -> tuple[int, int]:
        return (self.qs.shape[0], self.qs.shape[1] * QK)

    def codes(self) -> torch.Tensor:
        """[N, K] uint8 in [0, 15]."""
        return torch.cat([self.qs & 0x0F, self.qs >> 4], dim=2).reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """[N, K] float32."""
        rep = lambda t: t.float().repeat_interleave(QK, dim=1)  # noqa: E731
        return self.codes().float() * rep(self.d) + rep(self.m)

    def rows(self, index: torch.Tensor) -> Q4Blocks:
        return Q4Blocks(self.qs[index], self.d[index], self.m[index])

    @staticmethod
    def cat(parts: list[Q4Blocks]) -> Q4Blocks:
        return Q4Blocks(*(torch.cat([getattr(p, f) for p in parts]).contiguous() for f in ("qs", "d", "m")))


@dataclass(frozen=True)
class Q8Blocks:
    qs: torch.Tensor  # [N, K] int8
    d: torch.Tensor  # [N, K / 32] float16

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qs.shape)

    def dequantize(self) -> torch.Tensor:
        return self.qs.float() * self.d.float().repeat_interleave(QK, dim=1)

    def rows(self, index: torch.Tensor) -> Q8Blocks:
        return Q8Blocks(self.qs[index], self.d[index])

    @staticmethod
    def cat(parts: list[Q8Blocks]) -> Q8Blocks:
        return Q8Blocks(torch.cat([p.qs for p in parts]).contiguous(), torch.cat([p.d for p in parts]).contiguous())


def quantize_q8(w: torch.Tensor) -> Q8Blocks:
    """Float [N, K] (K % 32 == 0) -> Q8 blocks, d = max|block| / 127 (ggml's Q8_0 rule)."""
    n, k = w.shape
    blocks = w.float().reshape(n, k // QK, QK)
    d = blocks.abs().amax(dim=2) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    qs = torch.round(blocks * inv[..., None]).clamp(-127, 127).to(torch.int8).reshape(n, k)
    return Q8Blocks(qs, d.half())


def pack_q4(codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> Q4Blocks:
    """codes [N, K] in [0, 15] (K % 32 == 0), d and m [N, K / 32] -> Q4Blocks (w = d * q + m)."""
    n, k = codes.shape
    c = codes.to(torch.uint8).reshape(n, k // QK, QK)
    qs = (c[:, :, :16] | (c[:, :, 16:] << 4)).contiguous()
    return Q4Blocks(qs, d.half().contiguous(), m.half().contiguous())


def q4_from_groups(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int) -> Q4Blocks:
    """A GPTQ-style weight w = s * (q - z) with contiguous groups of `group` columns (a multiple of 32;
    the last group may be short): scales, zeros [G, N] -> Q4Blocks with each group's scale and -s * z
    repeated over its blocks."""
    n, k = codes.shape
    if group % QK or k % QK:
        raise ValueError(f"group size {group} / K={k} do not split into 32-weight blocks")
    g_of_block = (torch.arange(k // QK) * QK) // group
    s = scales.float()[g_of_block].T  # [N, K / 32]
    return pack_q4(codes, s, -s * zeros.float()[g_of_block].T)


@dataclass(frozen=True)
class Q4x8:
    """Q4 blocks of 8 rows interleaved for `q4_linear` (layout in kernels/sluice_kernels/cpu/quant_linear.cpp):
    qs [G, K/32, 128] uint8, d and m [G, K/32, 8] float16, G = ceil(n / 8)."""

    qs: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor
    n: int


@dataclass(frozen=True)
class Q8x8:
    """Q8 blocks of 8 rows interleaved for `q8_linear`: qs [G, K/32, 256] int8, d [G, K/32, 8] f16."""

    qs: torch.Tensor
    d: torch.Tensor
    n: int


def _pad_rows(t: torch.Tensor, groups: int) -> torch.Tensor:
    pad = groups * 8 - t.shape[0]
    return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t


def _lanes(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, nb] per-block values -> [G, nb, 8]: the 8 rows of a group side by side."""
    return _pad_rows(t, groups).reshape(groups, 8, -1).permute(0, 2, 1).contiguous()


def _chunks(codes: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, K] codes -> [G, K/32, 8, 32]: per block, chunk c holds elements 4c..4c+3 of the 8 rows."""
    nb = codes.shape[1] // QK
    return _pad_rows(codes, groups).reshape(groups, 8, nb, 8, 4).permute(0, 2, 3, 1, 4).reshape(groups, nb, 8, 32)


def interleave(b: Q4Blocks | Q8Blocks) -> Q4x8 | Q8x8:
    n = b.shape[0]
    groups = (n + 7) // 8
    if isinstance(b, Q8Blocks):
        qs = _chunks(b.qs, groups).reshape(groups, -1, 256).contiguous()
        return Q8x8(qs, _lanes(b.d, groups), n)
    c = _chunks(b.codes(), groups)  # chunk k in the low nibbles, chunk k + 4 in the high ones
    qs = (c[:, :, :4] | (c[:, :, 4:] << 4)).reshape(groups, -1, 128).contiguous()
    return Q4x8(qs, _lanes(b.d, groups), _lanes(b.m, groups), n)


# ggml block layouts: (bytes per block, offset of the 16/32 code bytes)
_Q4_0, _Q4_1, _Q8_0 = 2, 3, 8
GGML_BLOCK_TYPES = {_Q4_0: 18, _Q4_1: 20, _Q8_0: 34}


def from_ggml(raw: np.ndarray, ggml_type: int) -> Q4Blocks | Q8Blocks:
    """raw: [N, bytes_per_row] uint8 of a Q4_0 / Q4_1 / Q8_0 tensor -> blocks (codes untouched)."""
    if ggml_type not in GGML_BLOCK_TYPES:
        raise ValueError(f"ggml type {ggml_type} is not Q4_0 / Q4_1 / Q8_0")
    n, size = raw.shape[0], GGML_BLOCK_TYPES[ggml_type]
    blocks = np.ascontiguousarray(raw).reshape(n, -1, size)
    d = torch.from_numpy(blocks[:, :, 0:2].copy().view(np.float16)[..., 0])
    if ggml_type == _Q8_0:
        return Q8Blocks(torch.from_numpy(blocks[:, :, 2:].copy().view(np.int8).reshape(n, -1)), d)
    qs = torch.from_numpy(blocks[:, :, size - 16:].copy())
    if ggml_type == _Q4_1:
        m = torch.from_numpy(blocks[:, :, 2:4].copy().view(np.float16)[..., 0])
    else:  # Q4_0: w = d * (q - 8)
        m = (-8 * d.float()).half()
    return Q4Blocks(qs, d, m)
