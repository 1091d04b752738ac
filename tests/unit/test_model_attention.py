"""Paged attention backends == a naive reference on random data (no model needed).

The batch mixes every case the runner produces: a fresh prefill, a prefill chunk with a cached
prefix, decodes of very different context lengths (so the CPU path splits its padded groups), and
a 3-token verify step; block tables are shuffled so nothing is contiguous.
"""

from __future__ import annotations

import random

import pytest
import torch

from serve.attention.base import get_backend
from serve.worker.forward_context import build_context
from tests.requirements import kernels_missing, require, requires

HQ, HKV, D, BS, NB = 6, 2, 16, 4, 64
CASES = [(0, 9), (11, 5), (30, 1), (3, 1), (17, 1), (8, 3)]  # (cached tokens, tokens this step)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_new: int, scale: float) -> torch.Tensor:
    """q: [n_new, HQ, D]; k, v: [L, HKV, D] for all positions -> [n_new, HQ, D], causal at the end."""
    g = HQ // HKV
    kk, vv = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, kk) * scale
    L = k.shape[0]
    qpos = torch.arange(L - n_new, L).unsqueeze(1)
    scores = scores.masked_fill(torch.arange(L).unsqueeze(0) > qpos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vv)


def make_batch(seed: int, device: torch.device, bs: int = BS, nb: int = NB):
    gen = torch.Generator().manual_seed(seed)
    blocks = list(range(nb))
    random.Random(seed).shuffle(blocks)
    k_cache, v_cache = torch.zeros(nb, bs, HKV, D), torch.zeros(nb, bs, HKV, D)
    tables, full_k, full_v = [], [], []
    for cached, new in CASES:
        n_blocks = (cached + new + bs - 1) // bs
        table, blocks = blocks[:n_blocks], blocks[n_blocks:]
        kk, vv = torch.randn(cached + new, HKV, D, generator=gen), torch.randn(cached + new, HKV, D, generator=gen)
        for p in range(cached):  # the prefix an earlier step wrote
            k_cache[table[p // bs], p % bs], v_cache[table[p // bs], p % bs] = kk[p], vv[p]
        tables.append(table)
        full_k.append(kk)
        full_v.append(vv)
    ctx = build_context([n for _, n in CASES], [c for c, _ in CASES], tables, bs, device)
    q = torch.randn(ctx.positions.shape[0], HQ, D, generator=gen)
    k = torch.cat([kk[c:] for kk, (c, _) in zip(full_k, CASES, strict=True)])
    v = torch.cat([vv[c:] for vv, (c, _) in zip(full_v, CASES, strict=True)])
    return ctx, q, k, v, k_cache, v_cache, full_k, full_v


def expected(q: torch.Tensor, full_k: list, full_v: list, scale: float) -> torch.Tensor:
    out, row = [], 0
    for (_, n), kk, vv in zip(CASES, full_k, full_v, strict=True):
        out.append(reference(q[row:row + n], kk, vv, n, scale))
        row += n
    return torch.cat(out)


@pytest.mark.parametrize("decode_kernel", [True, False], ids=["cpu-decode-kernel", "gather-sdpa"])
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_sdpa_matches_reference(seed: int, decode_kernel: bool) -> None:
    dev = torch.device("cpu")
    ctx, q, k, v, kc, vc, full_k, full_v = make_batch(seed, dev)
    backend = get_backend("torch_sdpa", dev, BS)
    if decode_kernel and backend._decode_kernel is None:
        require("kernels", kernels_missing() or "the build failed (see the warning logged)")
    if not decode_kernel:
        backend._decode_kernel = None
    meta = backend.prepare(ctx)
    assert len(meta.groups) >= 3  # decode lengths 31, 4, 18 split; the verify step is its own group
    out = backend.forward(q, k, v, kc, vc, meta, D ** -0.5)
    torch.testing.assert_close(out, expected(q, full_k, full_v, D ** -0.5), atol=1e-5, rtol=1e-5)
    # The step's K/V landed at their slots.
    slots = ctx.slot_mapping
    torch.testing.assert_close(kc.view(-1, HKV, D)[slots], k)
    torch.testing.assert_close(vc.view(-1, HKV, D)[slots], v)


@requires("kernels", kernels_missing())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_decode_row_gives_the_same_bits_alone_or_in_a_batch(dtype: torch.dtype) -> None:
    """The CPU decode kernel computes each sequence on its own: no padding to the group's longest
    context, so greedy tokens cannot depend on which other requests share the step."""
    gen = torch.Generator().manual_seed(5)
    kc, vc = torch.randn(NB, BS, HKV, D, generator=gen).to(dtype), torch.randn(NB, BS, HKV, D, generator=gen).to(dtype)
    tables, lens = [[3, 9, 1, 40, 22], [5, 6], [7, 8, 10, 11]], [18, 5, 13]
    q = torch.randn(3, HQ, D, generator=gen).to(dtype)
    dev = torch.device("cpu")

    def run(rows: list[int]) -> torch.Tensor:
        ctx = build_context([1] * len(rows), [lens[r] - 1 for r in rows], [tables[r] for r in rows], BS, dev)
        backend = get_backend("torch_sdpa", dev, BS)
        meta = backend.prepare(ctx)
        # rewrite the step's own K/V with what the cache already holds there, so runs stay comparable
        slots = ctx.slot_mapping
        return backend.forward(q[rows], kc.view(-1, HKV, D)[slots].clone(), vc.view(-1, HKV, D)[slots].clone(),
                               kc, vc, meta, D ** -0.5)

    together = run([0, 1, 2])
    for r in range(3):
        assert torch.equal(run([r])[0], together[r])
    slots0 = [t * BS + i for t in tables[0] for i in range(BS)][:lens[0]]
    ref = reference(q[0:1].float(), kc.view(-1, HKV, D)[slots0].float(), vc.view(-1, HKV, D)[slots0].float(), 1,
                    D ** -0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(together[0:1].float(), ref, atol=tol, rtol=tol)


def test_all_decode_step_needs_no_row_shuffle() -> None:
    ctx = build_context([1, 1, 1], [5, 7, 6], [[0, 1], [2, 3], [4, 5]], BS, torch.device("cpu"))
    meta = get_backend("torch_sdpa", torch.device("cpu"), BS).prepare(ctx)
    assert len(meta.groups) == 1 and meta.groups[0].rows is None and not meta.fresh


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("nope", torch.device("cpu"))


@pytest.mark.gpu
def test_flash_attn_matches_torch_sdpa_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("flash_attn")
    dev = torch.device("cuda")
    ctx, q, k, v, kc, vc, full_k, full_v = make_batch(0, dev, bs=256, nb=16)
    backend = get_backend("flash_attn", dev, 256)
    args = [t.to(dev, torch.float16) for t in (q, k, v, kc, vc)]
    out = backend.forward(*args, backend.prepare(ctx), D ** -0.5)
    ref = expected(q, full_k, full_v, D ** -0.5)
    torch.testing.assert_close(out.float().cpu(), ref, atol=2e-3, rtol=2e-3)


@requires("kernels", kernels_missing())
def test_all_decode_step_through_the_kernel_writes_the_cache_and_matches_sdpa() -> None:
    """The all-decode fast path hands the step's K/V to the kernel, which writes them to their slots
    and attends in one call: same cache contents and outputs as index_copy_ + gather + SDPA."""
    gen = torch.Generator().manual_seed(6)
    dev = torch.device("cpu")
    tables, cached = [[9, 2, 30], [4], [17, 8]], [9, 2, 5]
    ctx = build_context([1, 1, 1], cached, tables, BS, dev)
    q = torch.randn(3, HQ, D, generator=gen)
    k, v = torch.randn(3, HKV, D, generator=gen), torch.randn(3, HKV, D, generator=gen)
    base_k, base_v = torch.randn(NB, BS, HKV, D, generator=gen), torch.randn(NB, BS, HKV, D, generator=gen)
    outs, caches = [], []
    for use_kernel in (True, False):
        backend = get_backend("torch_sdpa", dev, BS)
        if not use_kernel:
            backend._decode_kernel = None
        kc, vc = base_k.clone(), base_v.clone()
        outs.append(backend.forward(q, k, v, kc, vc, backend.prepare(ctx), D ** -0.5))
        caches.append((kc, vc))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1])
    assert torch.equal(caches[0][0].view(-1, HKV, D)[ctx.slot_mapping], k)
