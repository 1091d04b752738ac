"""Paged attention on CUDA with the flash-attn package (imported lazily; an optional extra).

One `flash_attn_varlen_func` call per layer covers the whole packed batch: queries are packed by
`cu_seqlens_q`, keys are read straight from the paged cache through `block_table`, and `causal=True`
aligns each query block to the end of its sequence's keys (bottom-right), which is exactly "attend
to the cached prefix plus the earlier tokens of this chunk". Upstream flash-attn needs pages of a
multiple of 256 tokens, hence the block-size check.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

from serve.worker.forward_context import ForwardContext


@dataclass
class FlashMetadata:
    slot_mapping: torch.Tensor  # [T] int64
    cu_seqlens_q: torch.Tensor  # [B + 1] int32
    cu_seqlens_k: torch.Tensor  # [B + 1] int32
    max_seqlen_q: int
    max_seqlen_k: int
    block_table: torch.Tensor  # [B, max_blocks] int32, padded with 0


class FlashAttnBackend:
    name = "flash_attn"

    def __init__(self, device: torch.device, block_size: int = 256) -> None:
        if device.type != "cuda":
            raise ValueError("the flash_attn attention backend needs a CUDA device; use torch_sdpa on CPU")
        if block_size % 256:
            raise ValueError(f"flash_attn needs block_size to be a multiple of 256 (got {block_size}); "
                             "use torch_sdpa or a larger block size")
        try:
            from flash_attn import flash_attn_varlen_func
        except ImportError as e:
            raise ValueError("attention backend flash_attn needs the flash-attn package "
                             "(pip install 'sluice[cuda]')") from e
        self._varlen = flash_attn_varlen_func
        self.device = device

    def prepare(self, ctx: ForwardContext) -> FlashMetadata:
        ctx_lens = ctx.context_lens
        width = max(len(t) for t in ctx.block_tables)
        table = torch.tensor([t + [0] * (width - len(t)) for t in ctx.block_tables], dtype=torch.int32)
        return FlashMetadata(
            slot_mapping=ctx.slot_mapping,
            cu_seqlens_q=torch.tensor([0, *accumulate(ctx.query_lens)], dtype=torch.int32).to(self.device),
            cu_seqlens_k=torch.tensor([0, *accumulate(ctx_lens)], dtype=torch.int32).to(self.device),
            max_seqlen_q=max(ctx.query_lens), max_seqlen_k=max(ctx_lens),
            block_table=table.to(self.device))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: FlashMetadata, scale: float) -> torch.Tensor:
        """q: [T, Hq, D]; k, v: [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> [T, Hq, D]."""
        n_kv, d = k.shape[1], k.shape[2]
        k_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, v)
        return self._varlen(q, k_cache, v_cache, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_seqlen_q,
                            meta.max_seqlen_k, softmax_scale=scale, causal=True, block_table=meta.block_table)
