"""GGUF quantized weights in the native engine without dequantizing them (quant method "gguf").

ggml's Q4_0 / Q4_1 / Q8_0 tensors arrive as `Q4Blocks` / `Q8Blocks` (serve/layers/quant/blocks.py:
codes untouched, f16 scales). On an x86 CPU with AVX2 the layer keeps them as they are and runs the
block kernels of kernels/sluice_kernels/cpu (activations quantized per 32-block to int8, as llama.cpp does),
so the engine reads the same 4.5-8.5 bits per weight llama.cpp does. Without those kernels, Q4
layers are repacked for PyTorch's int4 kernel (w = (q - 8) * scale + offset, group 32) and Q8
layers dequantized. Tensors of any other type (F32/F16, K-quants) are dequantized and logged. A
tied output projection whose embedding is Q4/Q8 gets the embedding's blocks as `lm_head.weight`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serve.layers.quant import block_call
from serve.layers.quant.base import register_quant_method
from serve.layers.quant.block_call import block_kernels_here as _block_kernels
from serve.layers.quant.blocks import (
    GGML_BLOCK_TYPES,
    QK,
    Q4Blocks,
    Q8Blocks,
    from_ggml,
    interleave,
)
from serve.layers.quant.int4_cpu import int4_matmul, int4_supported, pack_int4_affine

log = logging.getLogger(__name__)
Q4_0, Q4_1, Q8_0 = 2, 3, 8  # GGMLQuantizationType values


@dataclass(frozen=True)
class Int4Affine:
    """Q4 blocks in the form of torch's int4 kernel: codes [N, K] int32 in [0, 15]; scales, offsets
    [N, K / 32] float32 with w = (q - 8) * scale + offset."""

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor


def int4_affine(b: Q4Blocks) -> Int4Affine:
    d = b.d.float()
    return Int4Affine(b.codes().to(torch.int32), d, b.m.float() + 8 * d)


def _unpermute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    from serve.models.gguf_reader import unpermute_rows

    return unpermute_rows(t, n_head)


def gguf_int4_weights(path: str | Path, cfg: object) -> Iterator[tuple[str, object]]:
    """(HF name, Q4Blocks | Q8Blocks | float tensor) for every tensor the model uses, in HF layout."""
    from serve.models.gguf_reader import GGUFModelFile, hf_name

    container = GGUFModelFile(path).container
    blocks, dense = 0, []
    for gguf_name, info in container.tensors.items():
        name = hf_name(gguf_name)
        if name is None:
            continue
        heads = cfg.num_heads if name.endswith("q_proj.weight") else \
            cfg.num_kv_heads if name.endswith("k_proj.weight") else None
        is_linear = name.startswith("model.layers.") and name.endswith("proj.weight")
        if info.ggml_type in GGML_BLOCK_TYPES and (is_linear or name == "model.embed_tokens.weight"):
            b = from_ggml(container.raw(gguf_name), info.ggml_type)
            if heads:
                b = b.rows(_unpermute(torch.arange(b.shape[0]), heads))
            if is_linear:
                blocks += 1
                yield name, b
                continue
            if getattr(cfg, "tie_word_embeddings", False):
                yield "lm_head.weight", b  # the tied output projection reads the embedding's blocks
        elif is_linear:
            log.info("GGUF tensor %s (ggml type %d) has no quantized kernel; dequantized", gguf_name, info.ggml_type)
            dense.append(gguf_name)
        w = torch.from_numpy(container.dequantize(gguf_name))
        yield name, _unpermute(w, heads) if heads else w
    log.info("GGUF %s: %d linear weights as Q4/Q8 blocks, %d dequantized%s", Path(path).name,
             blocks, len(dense), f" ({', '.join(dense[:4])}{', ...' if len(dense) > 4 else ''})" if dense else "")


class GGUFInt4Method:
    name = "gguf"

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       params_dtype: torch.dtype) -> None:
        layer._gguf_shards = {}
        layer._gguf_dims = (out_features, in_features, params_dtype)

    def load_rows(self, layer: nn.Module, rows: Q4Blocks | Q8Blocks | torch.Tensor, row_offset: int) -> None:
        layer._gguf_shards[row_offset] = rows

    def finalize(self, layer: nn.Module) -> None:
        n, k, dtype = layer._gguf_dims
        parts = [layer._gguf_shards[o] for o in sorted(layer._gguf_shards)]
        del layer._gguf_shards
        device = torch.get_default_device()
        if _block_kernels():
            layer.block_parts = _block_parts(parts, dtype)
            # The common case (one block type for the whole layer) skips the per-part dispatch: at
            # batch 1 a step makes ~120 of these calls and each Python-level branch shows.
            if len(layer.block_parts) == 1 and not isinstance(layer.block_parts[0], torch.Tensor):
                layer.block_call = block_call.kernel_call(layer.block_parts[0])
            return
        if all(isinstance(p, Q4Blocks) for p in parts) and int4_supported(n, k, QK, device):
            a = [int4_affine(p) for p in parts]
            layer.int4 = pack_int4_affine(torch.cat([x.codes for x in a]), torch.cat([x.scales for x in a]).T.contiguous(),
                                          torch.cat([x.offsets for x in a]).T.contiguous(), QK, dtype)
            return
        if any(isinstance(p, Q4Blocks | Q8Blocks) for p in parts):
            log.info("GGUF blocks of a [%d, %d] weight have no kernel here; dequantized", n, k)
        dense = [p.float() if isinstance(p, torch.Tensor) else p.dequantize() for p in parts]
        layer.register_parameter("weight", nn.Parameter(torch.cat(dense).to(dtype), requires_grad=False))

    def apply(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        call = getattr(layer, "block_call", None)
        if call is not None:
            return block_call.run(call, x)
        if hasattr(layer, "block_parts"):
            return _apply_block_parts(layer.block_parts, x)
        if hasattr(layer, "int4"):
            return int4_matmul(x, layer.int4)
        return F.linear(x, layer.weight)


def _block_parts(parts: list[Q4Blocks | Q8Blocks | torch.Tensor], dtype: torch.dtype) -> list[object]:
    """Adjacent shards of one block type merge into one kernel call (fused QKV / gate-up), laid out
    for the kernels (8 rows interleaved); float shards stay float."""
    merged: list[object] = []
    for p in parts:
        p = p.to(dtype) if isinstance(p, torch.Tensor) else p
        if merged and type(merged[-1]) is type(p) and not isinstance(p, torch.Tensor):
            merged[-1] = type(p).cat([merged[-1], p])
        else:
            merged.append(p)
    return [p if isinstance(p, torch.Tensor) else interleave(p) for p in merged]


def _apply_block_parts(parts: list[object], x: torch.Tensor) -> torch.Tensor:
    """A layer whose shards mix block types (or float): one kernel call per run of one type."""
    outs = [F.linear(x, p) if isinstance(p, torch.Tensor) else block_call.run(block_call.kernel_call(p), x)
            for p in parts]
    return torch.cat(outs, dim=-1)


register_quant_method("gguf", GGUFInt4Method)
