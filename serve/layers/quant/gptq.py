"""GPTQ checkpoints in the native engine, without dequantizing the model at load.

A GPTQ linear arrives as a `GPTQShard` (its qweight / qzeros / scales / g_idx) where an unquantized
model passes a float weight; fused layers (QKV, gate/up) receive one shard per projection. At
`finalize` the shards are concatenated along the output dim and repacked once for PyTorch's CPU int4
kernel. Act-order checkpoints (g_idx not monotone) have their input columns permuted at load so each
group is contiguous; `apply` then permutes the activations the same way (x[:, perm] @ W[:, perm].T
== x @ W.T). Layers the kernel cannot take (8 bits, N % 16 != 0, odd groups, CUDA) fall back to a
dequantized dense weight, logged by name.

"gptq_reference" loads the same checkpoints through the independent dequantizer and a plain
F.linear: the reference the int4 path is tested against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sluice_kernels import gptq_hook
from torch import nn

from serve.layers.quant import block_call
from serve.layers.quant.base import register_quant_method
from serve.layers.quant.block_call import block_kernels_here as _block_kernels
from serve.layers.quant.blocks import QK, interleave, q4_from_groups
from serve.layers.quant.int4_cpu import int4_matmul, int4_supported, pack_int4
from serve.quantize.dequant import dequantize_gptq
from serve.quantize.packing import unpack_qweight, unpack_qzeros

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQShard:
    """One projection's checkpoint tensors (see serve/quantize/packing.py for their layout)."""

    qweight: torch.Tensor  # [K / f, N] int32
    qzeros: torch.Tensor  # [G, N / f] int32
    scales: torch.Tensor  # [G, N] float16
    g_idx: torch.Tensor  # [K] int32
    bits: int
    group_size: int  # -1: one group of K columns
    zero_offset: int = 1  # 1: v1 checkpoints store zero - 1; 0: gptq_v2

    @property
    def shape(self) -> tuple[int, int]:
        """The logical weight shape [N out, K in], so `Linear.load_shard` can check it."""
        return (self.qweight.shape[1], self.qweight.shape[0] * 32 // self.bits)


@dataclass
class _Pending:
    in_features: int
    out_features: int
    dtype: torch.dtype
    shards: dict[int, GPTQShard | torch.Tensor] = field(default_factory=dict)  # row offset -> shard


def _concat_rows(shards: dict[int, GPTQShard | torch.Tensor], total: int) -> list[GPTQShard | torch.Tensor]:
    offs = sorted(shards)
    ends = [o + shards[o].shape[0] for o in offs]
    if offs[:1] != [0] or ends[-1] != total or any(e != o for e, o in zip(ends, offs[1:], strict=False)):
        raise ValueError(f"linear shards at rows {offs} do not tile {total} output rows")
    return [shards[o] for o in offs]


def _dense(layer: nn.Module, w: torch.Tensor) -> None:
    layer.register_parameter("weight", nn.Parameter(w.contiguous(), requires_grad=False))


class GPTQReferenceMethod:
    """Dequantize each shard with the independent dequantizer; matmul with F.linear."""

    name = "gptq_reference"

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       params_dtype: torch.dtype) -> None:
        layer._gptq = _Pending(in_features, out_features, params_dtype)

    def load_rows(self, layer: nn.Module, rows: GPTQShard | torch.Tensor, row_offset: int) -> None:
        pending: _Pending = layer._gptq
        if rows.shape[1] != pending.in_features:
            raise ValueError(f"shard of shape {tuple(rows.shape)} does not fit in_features {pending.in_features}")
        pending.shards[row_offset] = rows

    def finalize(self, layer: nn.Module) -> None:
        pending: _Pending = layer._gptq
        parts = _concat_rows(pending.shards, pending.out_features)
        if all(isinstance(p, GPTQShard) for p in parts):
            self._finalize_quantized(layer, parts, pending)
        elif any(isinstance(p, GPTQShard) for p in parts):
            raise ValueError("a fused linear mixes GPTQ and unquantized projections")
        else:  # e.g. an untied lm_head the checkpoint left in float
            _dense(layer, torch.cat(parts).to(pending.dtype))
        del layer._gptq

    def _finalize_quantized(self, layer: nn.Module, parts: list[GPTQShard], pending: _Pending) -> None:
        w = torch.cat([dequantize_gptq(p.qweight, p.qzeros, p.scales, p.g_idx, p.bits, p.zero_offset)
                       for p in parts])
        _dense(layer, w.to(pending.dtype))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight)


def _contiguous_order(g_idx: torch.Tensor, group: int) -> torch.Tensor | None:
    """The column permutation making groups contiguous (None if already so); raises if the groups
    are not runs of exactly `group` columns once sorted (the kernel needs uniform groups)."""
    k = g_idx.numel()
    canonical = torch.arange(k, dtype=torch.int64) // group
    if torch.equal(g_idx.long(), canonical):
        return None
    perm = torch.argsort(g_idx.long(), stable=True)
    if not torch.equal(g_idx.long()[perm], canonical):
        raise ValueError("g_idx groups are not uniform runs of group_size columns")
    return perm


class GPTQMethod(GPTQReferenceMethod):
    """4-bit GPTQ through the CPU int4 kernel; other layers via the reference path."""

    name = "gptq"

    def _finalize_quantized(self, layer: nn.Module, parts: list[GPTQShard], pending: _Pending) -> None:
        bits, k = parts[0].bits, pending.in_features
        group = k if parts[0].group_size == -1 else parts[0].group_size
        same_gidx = all(torch.equal(p.g_idx, parts[0].g_idx) for p in parts)
        device = torch.get_default_device()
        if device.type == "cuda" and bits == 4 and gptq_hook.attach(layer, parts, pending.out_features):
            return  # packed as in the checkpoint for the Triton dequant-GEMM (kernels/sluice_kernels/triton_gptq.py)
        if bits != 4 or not same_gidx or not int4_supported(pending.out_features, k, group, device):
            log.info("GPTQ layer [%d, %d] (bits=%d, group=%d) has no int4 kernel here; using dequantized weights",
                     pending.out_features, k, bits, group)
            super()._finalize_quantized(layer, parts, pending)
            return
        codes = torch.cat([unpack_qweight(p.qweight, bits) for p in parts])
        zeros = torch.cat([unpack_qzeros(p.qzeros, bits) - 1 + p.zero_offset for p in parts], dim=1)
        scales = torch.cat([p.scales for p in parts], dim=1)
        perm = _contiguous_order(parts[0].g_idx, group)
        if perm is not None:
            codes = codes[:, perm]
        layer.input_perm = perm
        if group % QK == 0 and _block_kernels():
            # AVX2 block kernel (kernels/sluice_kernels/cpu): int8 activations, any activation dtype
            layer.block_call = block_call.kernel_call(interleave(q4_from_groups(codes, scales, zeros, group)))
            return
        layer.int4 = pack_int4(codes, scales, zeros, group, pending.dtype)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and hasattr(layer, "gptq_packed"):
            return gptq_hook.apply(layer, x)
        call = getattr(layer, "block_call", None)
        if call is None and not hasattr(layer, "int4"):
            return F.linear(x, layer.weight)
        if layer.input_perm is not None:
            x = x.index_select(-1, layer.input_perm)
        if call is not None:
            return block_call.run(call, x)
        return int4_matmul(x, layer.int4)


register_quant_method("gptq", GPTQMethod)
register_quant_method("gptq_reference", GPTQReferenceMethod)
