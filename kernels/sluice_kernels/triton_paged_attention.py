"""Triton paged attention over the engine's block-table KV cache (decode, prefill and chunked prefill).

Layouts (serve/attention/base.py):
    q       [T, Hq, D]   packed tokens; sequence s owns rows [query_start[s], query_start[s] + query_len[s])
    caches  [num_blocks, block_size, Hkv, D]; position p of sequence s is at page block_table[s, p // bs],
            row p % bs. This step's K/V are already written there, so every key is read from the cache.
    out     [T, Hq, D]   in q's dtype
Query i of sequence s sits at position context_len - query_len + i and sees keys at positions <= it.

Tiling (FlashAttention-style, one pass, online softmax in fp32):
  * grid = (sequences, KV heads, query blocks). A program owns BLOCK_Q tokens of one sequence and the
    g = Hq / Hkv query heads that share one KV head, folded into the rows of a single M tile
    (row r = token r // G_PAD, head r % G_PAD). Each K/V tile is loaded once for all g heads: GQA
    without repeating K/V. Decode steps use BLOCK_Q = 1, so M is just the padded head group.
  * Keys are walked in tiles of BLOCK_N positions; each position's page comes from the block table,
    so any block size works (rows are gathered, each row a contiguous D-vector). The walk stops at the
    last position the program's queries can see: the cost follows the tokens attended, never the
    cache size.
  * Scores use exp2 with log2(e) folded into the scale. Rows that are padding (past the sequence or
    past g) are masked on load/store and kept finite so they never produce NaN.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from sluice_kernels.common import dot_config, interpreting

_LOG2E = 1.4426950408889634


@triton.jit
def _paged_attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, table_ptr, qstart_ptr, qlen_ptr, ctxlen_ptr,
                       sm_scale_log2, stride_qt, stride_qh, stride_ot, stride_oh,
                       stride_kb, stride_kr, stride_kh, stride_vb, stride_vr, stride_vh, stride_tb,
                       BLOCK_SIZE, GROUP, HEAD_DIM, BLOCK_Q: tl.constexpr, G_PAD: tl.constexpr,
                       M_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    qblk = tl.program_id(2)
    q_len = tl.load(qlen_ptr + seq)
    if qblk * BLOCK_Q >= q_len:
        return
    q_start = tl.load(qstart_ptr + seq)
    ctx_len = tl.load(ctxlen_ptr + seq)
    rows = tl.arange(0, M_ROWS)
    tok = qblk * BLOCK_Q + rows // G_PAD  # token index inside the sequence's query
    head = kvh * GROUP + rows % G_PAD
    row_ok = (rows // G_PAD < BLOCK_Q) & (rows % G_PAD < GROUP) & (tok < q_len)
    qpos = ctx_len - q_len + tok  # absolute position of each row's query
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_ptr + (q_start + tok)[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full((M_ROWS,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((M_ROWS,), dtype=tl.float32)
    acc = tl.zeros((M_ROWS, BLOCK_D), dtype=tl.float32)
    # Last key any row of this program sees (its last valid query's position), + 1.
    kv_end = tl.minimum(ctx_len, ctx_len - q_len + (qblk + 1) * BLOCK_Q)
    for start in range(0, kv_end, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        pos_ok = pos < kv_end
        page = tl.load(table_ptr + seq * stride_tb + pos // BLOCK_SIZE, mask=pos_ok, other=0)
        off = pos % BLOCK_SIZE
        kv_mask = pos_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + page[:, None] * stride_kb + off[:, None] * stride_kr + kvh * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q.to(DOT_DTYPE), tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PRECISION) * sm_scale_log2
        visible = (pos[None, :] <= qpos[:, None]) & pos_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + page[:, None] * stride_vb + off[:, None] * stride_vr + kvh * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        # p is rounded to V's dtype before the second dot, as FlashAttention does.
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(DOT_DTYPE), v.to(DOT_DTYPE),
                                            input_precision=DOT_PRECISION)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(o_ptr + (q_start + tok)[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tile_config(max_query_len: int, group: int) -> tuple[int, int, int]:
    """(BLOCK_Q, G_PAD, M_ROWS). G_PAD pads the head group to a power of two; decode (one query) gets
    BLOCK_Q = 1; prefill packs up to 64 rows. tl.dot wants M >= 16, so M_ROWS is at least 16."""
    g_pad = _pow2(group)
    block_q = 1 if max_query_len <= 1 else min(_pow2(max_query_len), max(1, 64 // g_pad))
    return block_q, g_pad, max(16, block_q * g_pad)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                    query_start: torch.Tensor, query_lens: torch.Tensor, context_lens: torch.Tensor,
                    max_query_len: int, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of packed queries to their paged context.

    q [T, Hq, D]; k_cache, v_cache [num_blocks, block_size, Hkv, D] (last dim contiguous);
    block_table [B, max_blocks] int32 (padding entries are never read past context_len);
    query_start, query_lens, context_lens [B] int32; max_query_len = max(query_lens).
    Returns [T, Hq, D] in q's dtype.
    """
    _, n_q, d = q.shape
    _, bs, n_kv, d_kv = k_cache.shape
    if d != d_kv or v_cache.shape != k_cache.shape or n_q % n_kv:
        raise ValueError(f"q {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)} / {tuple(v_cache.shape)}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("q and the caches need a contiguous head dim")
    num_seqs = query_lens.numel()
    out = torch.empty_like(q) if out is None else out
    if num_seqs == 0 or max_query_len == 0:
        return out
    group = n_q // n_kv
    block_q, g_pad, m_rows = tile_config(max_query_len, group)
    dot_dtype, precision = dot_config(q.dtype, interpreting(_paged_attn_kernel))
    grid = (num_seqs, n_kv, triton.cdiv(max_query_len, block_q))
    _paged_attn_kernel[grid](
        q, k_cache, v_cache, out, block_table, query_start, query_lens, context_lens,
        scale * _LOG2E, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), block_table.stride(0), bs, group, d,
        BLOCK_Q=block_q, G_PAD=g_pad, M_ROWS=m_rows, BLOCK_N=32, BLOCK_D=max(16, _pow2(d)),
        DOT_DTYPE=dot_dtype, DOT_PRECISION=precision)
    return out


def reference_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              block_tables: list[list[int]], query_lens: list[int], context_lens: list[int],
                              scale: float) -> torch.Tensor:
    """Plain-PyTorch reference, one sequence at a time in fp32: same shapes as `paged_attention`."""
    n_q, n_kv, bs = q.shape[1], k_cache.shape[2], k_cache.shape[1]
    out, start = torch.empty_like(q), 0
    for table, q_len, ctx in zip(block_tables, query_lens, context_lens, strict=True):
        slots = torch.tensor([table[p // bs] * bs + p % bs for p in range(ctx)], dtype=torch.int64)
        k = k_cache.flatten(0, 1)[slots].float().repeat_interleave(n_q // n_kv, dim=1)  # [ctx, Hq, D]
        v = v_cache.flatten(0, 1)[slots].float().repeat_interleave(n_q // n_kv, dim=1)
        s = torch.einsum("thd,lhd->htl", q[start:start + q_len].float(), k) * scale
        qpos = torch.arange(ctx - q_len, ctx).unsqueeze(1)
        s = s.masked_fill(torch.arange(ctx).unsqueeze(0) > qpos, -math.inf)
        out[start:start + q_len] = torch.einsum("htl,lhd->thd", s.softmax(-1), v).to(q.dtype)
        start += q_len
    return out
