"""Paged attention with our Triton kernel (kernels/sluice_kernels/triton_paged_attention.py).

One kernel launch per layer covers the whole packed batch (decodes, fresh prefills and prefill
chunks alike): this step's K/V are scattered into the cache first, then every query reads its
context straight from the pages through the block table. Any block size works. The kernel module
is imported here, lazily, so the model never imports Triton.

On CPU the backend only runs when the kernel was loaded under TRITON_INTERPRET=1 (the tests);
serving on CPU should use torch_sdpa.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from serve.worker.forward_context import ForwardContext


@dataclass
class TritonMetadata:
    slot_mapping: torch.Tensor  # [T] int64
    block_table: torch.Tensor  # [B, max_blocks] int32, padded with 0 (never read past context_len)
    query_start: torch.Tensor  # [B] int32
    query_lens: torch.Tensor  # [B] int32
    context_lens: torch.Tensor  # [B] int32
    max_query_len: int


def _load_kernels():
    try:
        return importlib.import_module("sluice_kernels.triton_paged_attention")
    except ImportError as e:
        raise ValueError("attention backend triton needs the triton package (pip install 'sluice[cuda]')") from e


class TritonAttnBackend:
    name = "triton"

    def __init__(self, device: torch.device, block_size: int = 16) -> None:
        self._kernels = _load_kernels()
        from sluice_kernels.common import interpreting

        if device.type != "cuda" and not interpreting(self._kernels._paged_attn_kernel):
            raise ValueError("the triton attention backend needs a CUDA device (or TRITON_INTERPRET=1 for "
                             "testing); use torch_sdpa on CPU")
        self.device = device

    def prepare(self, ctx: ForwardContext) -> TritonMetadata:
        width = max(1, max(len(t) for t in ctx.block_tables))
        table = torch.tensor([t + [0] * (width - len(t)) for t in ctx.block_tables], dtype=torch.int32)

        def ints(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.int32, device=self.device)

        return TritonMetadata(slot_mapping=ctx.slot_mapping, block_table=table.to(self.device),
                              query_start=ints(ctx.query_start), query_lens=ints(ctx.query_lens),
                              context_lens=ints(ctx.context_lens), max_query_len=max(ctx.query_lens))

    def decode_metadata(self, slot_mapping: torch.Tensor, block_table: torch.Tensor, context_lens: torch.Tensor,
                        query_start: torch.Tensor, query_lens: torch.Tensor) -> TritonMetadata:
        """Metadata of an all-decode step (one query per sequence) made of the given tensors, not built
        from lists: CUDA graphs replay over these static buffers (serve/worker/cuda_graphs.py).
        slot_mapping [B] int64; block_table [B, W] int32; context_lens, query_start (0..B-1) and
        query_lens (all 1) [B] int32. The kernel's grid depends only on B and max_query_len = 1."""
        return TritonMetadata(slot_mapping=slot_mapping, block_table=block_table, query_start=query_start,
                              query_lens=query_lens, context_lens=context_lens, max_query_len=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: TritonMetadata, scale: float) -> torch.Tensor:
        """q: [T, Hq, D]; k, v: [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> [T, Hq, D]."""
        n_kv, d = k.shape[1], k.shape[2]
        k_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, n_kv, d).index_copy_(0, meta.slot_mapping, v)
        return self._kernels.paged_attention(q.contiguous(), k_cache, v_cache, meta.block_table, meta.query_start,
                                             meta.query_lens, meta.context_lens, meta.max_query_len, scale)
