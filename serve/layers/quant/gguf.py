"""GGUF Q4_0 / Q4_1 weights straight into the CPU int4 kernel (quant method "gguf").

ggml's 4-bit blocks hold 32 weights of one row: an f16 scale d (and for Q4_1 an f16 minimum m), then
16 bytes whose low nibbles are elements 0..15 and high nibbles elements 16..31. Q4_1 means
w = d * q + m and Q4_0 w = d * (q - 8); both are exactly the int4 kernel's (q - 8) * scale + offset
with group 32, so the native engine reads the same 4.5-5 bits per weight llama.cpp does. Tensors of
any other type (Q8_0 embeddings, F32 norms, K-quants) are dequantized as before and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serve.layers.quant.base import register_quant_method
from serve.layers.quant.int4_cpu import int4_matmul, int4_supported, pack_int4_affine

log = logging.getLogger(__name__)
QK = 32  # weights per ggml block
Q4_0, Q4_1 = 2, 3  # GGMLQuantizationType values
_BLOCK_BYTES = {Q4_0: 18, Q4_1: 20}


@dataclass(frozen=True)
class GGUFInt4Shard:
    """codes [N, K] int32 in [0, 15]; scales, offsets [N, K / 32] float32 (w = (q - 8) * scale + offset)."""

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)


def decode_q4_blocks(raw: np.ndarray, ggml_type: int) -> GGUFInt4Shard:
    """raw: [N, bytes_per_row] uint8 of a Q4_0 / Q4_1 tensor -> its codes and kernel-form scales."""
    if ggml_type not in _BLOCK_BYTES:
        raise ValueError(f"ggml type {ggml_type} is not Q4_0 / Q4_1")
    n = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(n, -1, _BLOCK_BYTES[ggml_type])
    d = blocks[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # [N, B]
    qs = blocks[:, :, _BLOCK_BYTES[ggml_type] - 16:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, -1)  # per block: low nibbles, then high
    if ggml_type == Q4_1:
        m = blocks[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        offsets = m + 8 * d
    else:
        offsets = np.zeros_like(d)
    return GGUFInt4Shard(torch.from_numpy(codes.astype(np.int32)), torch.from_numpy(d), torch.from_numpy(offsets))


def _unpermute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    from serve.models.gguf_reader import unpermute_rows

    return unpermute_rows(t, n_head)


def gguf_int4_weights(path: str | Path, cfg: object) -> Iterator[tuple[str, object]]:
    """(HF name, GGUFInt4Shard | float tensor) for every tensor the model uses, in HF layout."""
    from serve.models.gguf_reader import GGUFModelFile, hf_name

    container = GGUFModelFile(path).container
    blocks, dense = 0, []
    for gguf_name, info in container.tensors.items():
        name = hf_name(gguf_name)
        if name is None:
            continue
        heads = cfg.num_heads if name.endswith("q_proj.weight") else \
            cfg.num_kv_heads if name.endswith("k_proj.weight") else None
        if info.ggml_type in _BLOCK_BYTES and name.startswith("model.layers."):
            s = decode_q4_blocks(container.raw(gguf_name), info.ggml_type)
            if heads:
                s = GGUFInt4Shard(*(_unpermute(t, heads) for t in (s.codes, s.scales, s.offsets)))
            blocks += 1
            yield name, s
            continue
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            # Q8_0 (per-32 block scales) has no exact form in torch's per-channel int8 kernel; K-quants'
            # super-blocks none in the int4 kernel: these linears run dense
            log.info("GGUF tensor %s (ggml type %d) has no quantized kernel; dequantized", gguf_name, info.ggml_type)
            dense.append(gguf_name)
        w = torch.from_numpy(container.dequantize(gguf_name))
        yield name, _unpermute(w, heads) if heads else w
    log.info("GGUF %s: %d linear weights as Q4 blocks for the int4 kernel, %d dequantized%s", Path(path).name,
             blocks, len(dense), f" ({', '.join(dense[:4])}{', ...' if len(dense) > 4 else ''})" if dense else "")


class GGUFInt4Method:
    name = "gguf"

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       params_dtype: torch.dtype) -> None:
        layer._gguf_shards = {}
        layer._gguf_dims = (out_features, in_features, params_dtype)

    def load_rows(self, layer: nn.Module, rows: GGUFInt4Shard | torch.Tensor, row_offset: int) -> None:
        layer._gguf_shards[row_offset] = rows

    def finalize(self, layer: nn.Module) -> None:
        n, k, dtype = layer._gguf_dims
        parts = [layer._gguf_shards[o] for o in sorted(layer._gguf_shards)]
        del layer._gguf_shards
        quantized = all(isinstance(p, GGUFInt4Shard) for p in parts)
        if quantized and int4_supported(n, k, QK, torch.get_default_device()):
            codes = torch.cat([p.codes for p in parts])
            scales = torch.cat([p.scales for p in parts]).T.contiguous()  # [K / 32, N]
            offsets = torch.cat([p.offsets for p in parts]).T.contiguous()
            layer.int4 = pack_int4_affine(codes, scales, offsets, QK, dtype)
            return
        if quantized:
            log.info("GGUF int4 blocks of a [%d, %d] weight do not fit the int4 kernel here; dequantized", n, k)
        dense = [self._dequantize(p) if isinstance(p, GGUFInt4Shard) else p.float() for p in parts]
        layer.register_parameter("weight", nn.Parameter(torch.cat(dense).to(dtype), requires_grad=False))

    @staticmethod
    def _dequantize(p: GGUFInt4Shard) -> torch.Tensor:
        rep = lambda t: t.repeat_interleave(QK, dim=1)  # noqa: E731
        return (p.codes.float() - 8) * rep(p.scales) + rep(p.offsets)

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if hasattr(layer, "int4"):
            return int4_matmul(x, layer.int4)
        return F.linear(x, layer.weight)


register_quant_method("gguf", GGUFInt4Method)
