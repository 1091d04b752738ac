"""The `triton` attention backend == `torch_sdpa` on random paged caches, on CPU via Triton's interpreter.

Batches mix what the runner produces: fresh prefills, prefill chunks over a cached prefix, decodes
with ragged context lengths, a 3-token verify step; block tables are shuffled so no sequence is
contiguous. GQA uses 6 query heads over 2 KV heads (g = 3, not a power of two). Both backends write
this step's K/V into their own copy of the cache, so the caches are compared too.
"""

from __future__ import annotations

import random

import pytest
import torch
from sluice_kernels.triton_paged_attention import paged_attention, reference_paged_attention, tile_config

from serve.attention.base import default_backend, get_backend
from serve.worker.forward_context import build_context

HQ, HKV, D = 6, 2, 32
MIXED = [(0, 9), (11, 5), (40, 1), (3, 1), (17, 1), (8, 3)]  # (cached tokens, tokens this step)
DECODE = [(37, 1), (0, 1), (70, 1), (5, 1)]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_step(cases: list[tuple[int, int]], bs: int, dtype: torch.dtype, seed: int):
    """Random caches holding each sequence's cached prefix, and this step's q / k / v."""
    gen = torch.Generator().manual_seed(seed)
    nb = sum((c + n + bs - 1) // bs for c, n in cases) + 3
    blocks = list(range(nb))
    random.Random(seed).shuffle(blocks)
    k_cache = torch.randn(nb, bs, HKV, D, generator=gen).to(dtype)  # stale garbage where nothing is written
    v_cache = torch.randn(nb, bs, HKV, D, generator=gen).to(dtype)
    tables = []
    for cached, new in cases:
        n_blocks = (cached + new + bs - 1) // bs
        tables.append(blocks[:n_blocks])
        blocks = blocks[n_blocks:]
    ctx = build_context([n for _, n in cases], [c for c, _ in cases], tables, bs, torch.device("cpu"))
    t = ctx.positions.shape[0]
    q, k, v = (torch.randn(t, h, D, generator=gen).to(dtype) for h in (HQ, HKV, HKV))
    return ctx, q, k, v, k_cache, v_cache


def run(name: str, step, bs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ctx, q, k, v, k_cache, v_cache = step
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    backend = get_backend(name, torch.device("cpu"), bs)
    out = backend.forward(q, k, v, k_cache, v_cache, backend.prepare(ctx), D ** -0.5)
    return out, k_cache, v_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cases,bs", [(MIXED, 16), (DECODE, 16), (MIXED, 5)])
def test_triton_backend_matches_torch_sdpa(cases: list[tuple[int, int]], bs: int, dtype: torch.dtype) -> None:
    step = make_step(cases, bs, dtype, seed=len(cases) + bs)
    out, kc, vc = run("triton", step, bs)
    ref, kc_ref, vc_ref = run("torch_sdpa", step, bs)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    err = float((out.float() - ref.float()).abs().max())
    assert err <= TOL[dtype] * float(ref.float().abs().max()), err


def test_kernel_matches_fp32_reference_per_sequence() -> None:
    """The launcher straight against the per-sequence fp32 reference, one long context (several key
    tiles) and a prefill long enough to span several query blocks."""
    cases = [(90, 1), (0, 40), (25, 20)]
    ctx, q, k, v, k_cache, v_cache = make_step(cases, 8, torch.float32, seed=3)
    n_kv = k.shape[1]
    k_cache.view(-1, n_kv, D).index_copy_(0, ctx.slot_mapping, k)
    v_cache.view(-1, n_kv, D).index_copy_(0, ctx.slot_mapping, v)
    meta = get_backend("triton", torch.device("cpu"), 8).prepare(ctx)
    out = paged_attention(q, k_cache, v_cache, meta.block_table, meta.query_start, meta.query_lens,
                          meta.context_lens, meta.max_query_len, 0.2)
    ref = reference_paged_attention(q, k_cache, v_cache, ctx.block_tables, ctx.query_lens, ctx.context_lens, 0.2)
    assert float((out - ref).abs().max()) < 1e-5


def test_tile_config_folds_heads_into_at_least_16_rows() -> None:
    assert tile_config(1, 3) == (1, 4, 16)  # decode: the head group alone, padded
    assert tile_config(40, 3) == (16, 4, 64)  # prefill: 16 tokens x 4 padded heads
    assert tile_config(2, 8) == (2, 8, 16)


def test_auto_keeps_torch_sdpa_on_cpu() -> None:
    assert default_backend(torch.device("cpu"), 16) == "torch_sdpa"
    assert get_backend("triton", torch.device("cpu"), 16).name == "triton"
