"""Triton dequant-GEMM for 4-bit GPTQ checkpoints: y = x @ dequant(W), W never materialised.

Checkpoint layout (AutoGPTQ v1, what `sluice quantize` writes; see serve/quantize/packing.py):
    qweight [K / 8, N] int32  code of (k, n) = (qweight[k // 8, n] >> 4 * (k % 8)) & 0xF
    qzeros  [G, N / 8] int32  zero of (g, n) = ((qzeros[g, n // 8] >> 4 * (n % 8)) & 0xF) + zero_offset
                              (zero_offset 1 for v1, which stores zero - 1; 0 for gptq_v2)
    scales  [G, N] fp16
    g_idx   [K] int32         group of input column k
    W[k, n] = scales[g_idx[k], n] * (code(k, n) - zero(g_idx[k], n))

Tiling: one program owns a [BLOCK_M, BLOCK_N] tile of y and walks K in steps of BLOCK_K (a multiple
of 8, so a tile holds whole packed words). Each K step loads x [BLOCK_M, BLOCK_K], the packed words
[BLOCK_K / 8 distinct rows, BLOCK_N] (each word is read by the 8 k's it holds, a cache hit after the
first), unpacks with a per-row shift, gathers each row's scale / zero through g_idx (so act-order
checkpoints need no repacking), and accumulates tl.dot in fp32. The dequantised tile is cast to x's
dtype before the dot, as a dense fp16 / bf16 matmul would hold it.

`gptq_matmul` is the checked launcher; `attach` / `apply` are the hooks the GPTQ quant method calls
on CUDA (serve/layers/quant/gptq.py). Triton is imported here, so import this module lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn

from sluice_kernels.common import dot_config, interpreting


@triton.jit
def _gptq_gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, gidx_ptr, y_ptr, M, N, K,
                      stride_xm, stride_xk, stride_qwk, stride_qwn, stride_qzg, stride_qzn,
                      stride_sg, stride_sn, stride_ym, stride_yn, ZERO_OFFSET: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # The zero of column n sits in word n // 8 at nibble n % 8: fixed for the whole K walk.
    zero_shift = ((offs_n % 8) * 4)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        wmask = mask_k[:, None] & mask_n[None, :]
        words = tl.load(qw_ptr + (offs_k // 8)[:, None] * stride_qwk + offs_n[None, :] * stride_qwn,
                        mask=wmask, other=0)
        codes = (words >> ((offs_k % 8) * 4)[:, None]) & 0xF
        g = tl.load(gidx_ptr + offs_k, mask=mask_k, other=0)
        scale = tl.load(s_ptr + g[:, None] * stride_sg + offs_n[None, :] * stride_sn, mask=wmask, other=0.0)
        zwords = tl.load(qz_ptr + g[:, None] * stride_qzg + (offs_n // 8)[None, :] * stride_qzn,
                         mask=wmask, other=0)
        zeros = ((zwords >> zero_shift) & 0xF) + ZERO_OFFSET
        w = (codes - zeros).to(tl.float32) * scale.to(tl.float32)  # [BLOCK_K, BLOCK_N]; masked rows are 0
        acc += tl.dot(x.to(DOT_DTYPE), w.to(x.dtype).to(DOT_DTYPE), input_precision=DOT_PRECISION)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _check(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
           g_idx: torch.Tensor) -> tuple[int, int]:
    """Validate the shapes / dtypes / devices; return (K, N)."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight / qzeros must be int32 (got {qweight.dtype}, {qzeros.dtype})")
    if qweight.dim() != 2 or scales.dim() != 2 or qzeros.dim() != 2:
        raise ValueError("qweight, qzeros and scales must be 2-D")
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} input features; qweight {tuple(qweight.shape)} holds K = {k}")
    groups = scales.shape[0]
    if scales.shape[1] != n or tuple(qzeros.shape) != (groups, (n + 7) // 8):
        raise ValueError(f"scales {tuple(scales.shape)} / qzeros {tuple(qzeros.shape)} do not match "
                         f"{groups} groups of N = {n}")
    if g_idx.shape != (k,):
        raise ValueError(f"g_idx must have shape ({k},), got {tuple(g_idx.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x must be fp16, bf16 or fp32 (got {x.dtype})")
    devices = {t.device for t in (x, qweight, qzeros, scales, g_idx)}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device (got {sorted(map(str, devices))})")
    return k, n


def _blocks(m: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): decode (m <= 16) wants one thin M tile and wide N tiles so
    enough programs exist; larger batches square the tile to reuse each unpacked weight tile."""
    if m <= 16:
        return 16, 64, 64
    if m <= 64:
        return 32, 64, 64
    return 64, 64, 32


def gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                g_idx: torch.Tensor, zero_offset: int = 1) -> torch.Tensor:
    """x [..., K] (fp16 / bf16 / fp32) @ dequant(W) [K, N] -> [..., N] in x's dtype, fp32 accumulation.

    qweight [K / 8, N] int32, qzeros [G, N / 8] int32, scales [G, N] fp16, g_idx [K] int32 (any order).
    """
    k, n = _check(x, qweight, qzeros, scales, g_idx)
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y.reshape(*x.shape[:-1], n)
    bm, bn, bk = _blocks(m)
    dot_dtype, precision = dot_config(x.dtype, interpreting(_gptq_gemm_kernel))
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _gptq_gemm_kernel[grid](
        x2, qweight, qzeros, scales, g_idx.to(torch.int32), y, m, n, k,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1), qzeros.stride(0), qzeros.stride(1),
        scales.stride(0), scales.stride(1), y.stride(0), y.stride(1), ZERO_OFFSET=zero_offset,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PRECISION=precision, DOT_DTYPE=dot_dtype)
    return y.reshape(*x.shape[:-1], n)


def attach(layer: nn.Module, parts: list, out_features: int) -> bool:
    """Keep a layer's GPTQ shards packed for `apply` (fused projections concatenated along N).

    parts: GPTQShard-like objects (qweight / qzeros / scales / g_idx / bits / zero_offset).
    Returns False, leaving the layer untouched, when this kernel cannot take them (not 4-bit, shards
    with different g_idx or zero conventions, or an N not a multiple of 8 so qzeros cannot be joined).
    """
    first = parts[0]
    if any(p.bits != 4 or p.zero_offset != first.zero_offset or not torch.equal(p.g_idx, first.g_idx)
           or p.qweight.shape[1] % 8 for p in parts):
        return False
    device = torch.get_default_device()
    layer.gptq_packed = (torch.cat([p.qweight for p in parts], dim=1).to(device).contiguous(),
                         torch.cat([p.qzeros for p in parts], dim=1).to(device).contiguous(),
                         torch.cat([p.scales for p in parts], dim=1).to(device, torch.float16).contiguous(),
                         first.g_idx.to(device, torch.int32).contiguous())
    layer.gptq_zero_offset = first.zero_offset
    if layer.gptq_packed[0].shape[1] != out_features:
        raise ValueError(f"GPTQ shards hold {layer.gptq_packed[0].shape[1]} outputs, layer wants {out_features}")
    return True


def apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> [..., N] through the kernel, for a layer prepared by `attach`."""
    qweight, qzeros, scales, g_idx = layer.gptq_packed
    return gptq_matmul(x, qweight, qzeros, scales, g_idx, layer.gptq_zero_offset)
