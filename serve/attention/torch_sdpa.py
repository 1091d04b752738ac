"""Paged attention with torch's scaled_dot_product_attention: the CPU path and the reference.

How the paged cache is read, and why its cost follows the tokens attended, not the cache size:
  * A sequence whose whole context is computed this step (a fresh prefill, start_pos == 0) never
    touches the cache: it attends to its own K/V from this step with a causal SDPA.
  * Every other sequence needs its cached prefix. Sequences with the same query length (all decodes
    have 1) are batched; per group we gather exactly the slots of positions [0, context_len) of each
    member (an index built from its block table once per step) into [G, max_len, Hkv, D], padded
    only up to the longest context in the group, and mask the padding. The copy is
    G * max_len rows: it depends on the contexts, never on num_blocks. To keep padding bounded,
    members sorted by context length are split whenever a context is under half the group's
    longest, so padded rows are less than twice the rows attended.
  * Grouped-query attention without repeating K/V: the g = Hq / Hkv query heads that share a KV head
    are folded into the query-length axis, q: [G, Hkv, q_len * g, D] against K: [G, Hkv, L, D].
  * Decode groups (q_len == 1) on a CPU where kernels/sluice_kernels/cpu builds skip the gather and SDPA:
    `paged_decode_attention` reads each sequence's slots through its block table in place. Besides
    saving ~90 us per layer at batch 1, it makes a decode row's result independent of the batch
    around it (SDPA's result depends on the group's padded length), so greedy n > 1 samples and a
    request alone or in a crowd produce the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from serve.worker.forward_context import ForwardContext

# Speculative verify rows (k + 1 queries on a cached prefix) go through the decode kernel one row at
# a time, so each row computes exactly what plain decode computes at that position: greedy
# speculation then equals plain decoding token for token. Other multi-row queries (a prompt's tail
# after a prefix-cache hit) stay on SDPA, as a fresh prefill's do, which keeps a hit's first token
# equal to a miss's as far as SDPA's own batching allows.
MAX_KERNEL_ROWS = 16


@dataclass
class _Group:
    rows: torch.Tensor | None  # [G * q_len] packed-token rows of the members; None: all rows, in order
    q_len: int
    verify: bool  # the members' rows verify speculative drafts
    num_seqs: int
    max_len: int
    slots: torch.Tensor  # [G * max_len] int64 cache slots to gather (padding points at slot 0)
    mask: torch.Tensor | None  # [G, 1, q_len, max_len] bool, True = attend; None: no masking needed
    table: torch.Tensor  # [G, ceil(max_len / block_size)] int64 block ids (padded with 0)
    lens: torch.Tensor  # [G] int64 context lengths
    _folded: dict[tuple[int, torch.dtype], torch.Tensor | None] = field(default_factory=dict)
    _per_row: tuple[torch.Tensor, torch.Tensor] | None = None

    def per_row(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each of the q_len query rows as a decode query of its own: ([G * q_len, nb] block tables,
        [G * q_len] context lengths), row i of a member seeing its first ctx_len - q_len + i + 1
        positions. Built once per step."""
        if self._per_row is None:
            ql = self.q_len
            steps = torch.arange(ql, dtype=torch.int64, device=self.lens.device)
            lens = (self.lens.unsqueeze(1) - ql + 1 + steps).reshape(-1)
            self._per_row = (self.table.repeat_interleave(ql, dim=0), lens)
        return self._per_row

    def folded_mask(self, g: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive mask for queries folded as (q_len, g): [G, 1, q_len * g, max_len]. Built once per step."""
        key = (g, dtype)
        if key not in self._folded:
            m = self.mask
            if m is not None:
                m = m.repeat_interleave(g, dim=2) if self.q_len > 1 else m
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
            self._folded[key] = m
        return self._folded[key]


@dataclass
class SDPAMetadata:
    slot_mapping: torch.Tensor  # [T]
    fresh: list[tuple[int, int]]  # (row_start, length) of sequences with no cached prefix
    groups: list[_Group]


def _split_by_length(members: list[int], ctx_lens: list[int]) -> list[list[int]]:
    """Sort by context length (longest first); start a new group when one falls under half the longest."""
    out: list[list[int]] = []
    for i in sorted(members, key=lambda m: -ctx_lens[m]):
        if out and ctx_lens[i] * 2 >= ctx_lens[out[-1][0]]:
            out[-1].append(i)
        else:
            out.append([i])
    return [sorted(grp) for grp in out]  # packed order inside a group: an all-decode step needs no row shuffle


class TorchSDPABackend:
    name = "torch_sdpa"

    def __init__(self, device: torch.device, block_size: int = 16) -> None:
        self.device = device
        self._decode_kernel = _cpu_decode_kernel(device)

    def prepare(self, ctx: ForwardContext) -> SDPAMetadata:
        by_qlen: dict[tuple[int, bool], list[int]] = {}
        fresh: list[tuple[int, int]] = []
        starts, ctx_lens = ctx.query_start, ctx.context_lens
        verify = ctx.verify or [False] * ctx.num_seqs
        for i, (q, s) in enumerate(zip(ctx.query_lens, ctx.start_pos, strict=True)):
            if s == 0:
                fresh.append((starts[i], q))
            else:
                by_qlen.setdefault((q, q > 1 and verify[i]), []).append(i)
        groups = [self._group(ctx, members, q, starts, ctx_lens, v)
                  for (q, v), all_members in by_qlen.items() for members in _split_by_length(all_members, ctx_lens)]
        if len(groups) == 1 and not fresh and groups[0].num_seqs == ctx.num_seqs:
            rows = groups[0].rows
            if rows is not None and torch.equal(rows, torch.arange(rows.numel(), device=rows.device)):
                groups[0].rows = None  # the common all-decode step: no row gather / scatter
        return SDPAMetadata(ctx.slot_mapping, fresh, groups)

    def _group(self, ctx: ForwardContext, members: list[int], q_len: int, starts: list[int],
               ctx_lens: list[int], verify: bool = False) -> _Group:
        bs, dev = ctx.block_size, self.device
        lens = [ctx_lens[m] for m in members]
        max_len = max(lens)
        n_blocks = (max_len + bs - 1) // bs
        table = torch.tensor([ctx.block_tables[m][:n_blocks] + [0] * (n_blocks - len(ctx.block_tables[m][:n_blocks]))
                              for m in members], dtype=torch.int64, device=dev)
        offsets = torch.arange(bs, dtype=torch.int64, device=dev)
        slots = (table.unsqueeze(-1) * bs + offsets).view(len(members), -1)[:, :max_len]
        lens_t = torch.tensor(lens, dtype=torch.int64, device=dev)
        key_pos = torch.arange(max_len, device=dev)
        # Query i of a member sits at position ctx_len - q_len + i and sees keys at positions <= it.
        query_pos = lens_t.unsqueeze(1) - q_len + torch.arange(q_len, device=dev)
        mask = (key_pos.view(1, 1, -1) <= query_pos.unsqueeze(-1)).unsqueeze(1)
        needs_mask = q_len > 1 or min(lens) != max_len
        slots = torch.where(key_pos.unsqueeze(0) < lens_t.unsqueeze(1), slots, 0)
        rows = torch.tensor([starts[m] + j for m in members for j in range(q_len)], dtype=torch.int64, device=dev)
        return _Group(rows, q_len, verify, len(members), max_len, slots.reshape(-1).contiguous(),
                      mask if needs_mask else None, table, lens_t)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: SDPAMetadata, scale: float) -> torch.Tensor:
        """q: [T, Hq, D]; k, v: [T, Hkv, D]; caches [num_blocks, block_size, Hkv, D] -> [T, Hq, D]."""
        n_kv, d = k.shape[1], k.shape[2]
        only = meta.groups[0] if len(meta.groups) == 1 and not meta.fresh else None
        if only is not None and only.rows is None and only.q_len == 1 and self._kernel_takes(only, q, k_cache):
            # the all-decode step: one call writes this step's K/V and attends
            return self._decode_kernel(q.contiguous(), k_cache, v_cache, only.table, only.lens, scale, k, v,
                                       meta.slot_mapping)
        k_flat, v_flat = k_cache.view(-1, n_kv, d), v_cache.view(-1, n_kv, d)
        k_flat.index_copy_(0, meta.slot_mapping, k)
        v_flat.index_copy_(0, meta.slot_mapping, v)
        if len(meta.groups) == 1 and not meta.fresh and meta.groups[0].rows is None:
            return self._attend_cached(q, k_cache, v_cache, k_flat, v_flat, meta.groups[0], scale)
        out = torch.empty_like(q)
        for start, length in meta.fresh:
            out[start:start + length] = self._attend_fresh(q[start:start + length], k[start:start + length],
                                                           v[start:start + length], scale)
        for grp in meta.groups:
            qg = q if grp.rows is None else q.index_select(0, grp.rows)
            res = self._attend_cached(qg, k_cache, v_cache, k_flat, v_flat, grp, scale)
            if grp.rows is None:
                out.copy_(res)
            else:
                out.index_copy_(0, grp.rows, res)
        return out

    def _kernel_takes(self, grp: _Group, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
        return (self._decode_kernel is not None and (grp.q_len == 1 or (grp.verify and grp.q_len <= MAX_KERNEL_ROWS))
                and q.dtype == k_cache.dtype
                and q.dtype in (torch.float32, torch.bfloat16))

    def _attend_cached(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_flat: torch.Tensor,
                       v_flat: torch.Tensor, grp: _Group, scale: float) -> torch.Tensor:
        if self._kernel_takes(grp, q, k_cache):
            table, lens = (grp.table, grp.lens) if grp.q_len == 1 else grp.per_row()
            return self._decode_kernel(q.contiguous(), k_cache, v_cache, table, lens, scale)
        return self._attend_group(q, k_flat, v_flat, grp, scale)

    @staticmethod
    def _attend_fresh(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """One sequence attending causally to itself only. q: [L, Hq, D]; k, v: [L, Hkv, D]."""
        o = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                                           v.transpose(0, 1).unsqueeze(0), is_causal=True, scale=scale,
                                           enable_gqa=q.shape[1] != k.shape[1])
        return o.squeeze(0).transpose(0, 1)

    @staticmethod
    def _attend_group(q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor, grp: _Group,
                      scale: float) -> torch.Tensor:
        """q: [G * q_len, Hq, D] -> [G * q_len, Hq, D], attending to the gathered paged context."""
        n_kv, d = k_flat.shape[1], k_flat.shape[2]
        g = q.shape[1] // n_kv
        n, ql, L = grp.num_seqs, grp.q_len, grp.max_len
        kk = k_flat.index_select(0, grp.slots).view(n, L, n_kv, d).transpose(1, 2)
        vv = v_flat.index_select(0, grp.slots).view(n, L, n_kv, d).transpose(1, 2)
        # [G*ql, Hkv*g, D] -> [G, ql, Hkv, g, D] -> [G, Hkv, ql, g, D] -> [G, Hkv, ql*g, D]
        qf = q.view(n, ql, n_kv, g, d).permute(0, 2, 1, 3, 4).reshape(n, n_kv, ql * g, d)
        o = F.scaled_dot_product_attention(qf, kk, vv, attn_mask=grp.folded_mask(g, q.dtype), scale=scale)
        return o.view(n, n_kv, ql, g, d).permute(0, 2, 1, 3, 4).reshape(n * ql, n_kv * g, d)


def _cpu_decode_kernel(device: torch.device):  # noqa: ANN202 - the kernel function or None
    if device.type != "cpu":
        return None
    from sluice_kernels import cpu

    return cpu.paged_decode_attention if cpu.available() else None
