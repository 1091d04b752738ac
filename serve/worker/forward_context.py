"""ForwardContext: everything one forward pass needs to know about the packed batch.

Tokens of all scheduled sequences are packed flat: sequence i owns rows
[query_start[i], query_start[i] + query_lens[i]) of every [T, ...] activation. Its tokens sit at
absolute positions [start_pos[i], start_pos[i] + query_lens[i]) and, after this step's cache write,
it attends to positions [0, context_lens[i]) held in the blocks of block_tables[i].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ForwardContext:
    positions: torch.Tensor  # [T] int64, absolute position of each packed token
    slot_mapping: torch.Tensor  # [T] int64, block_id * block_size + offset where its K/V is written
    query_lens: list[int]  # per sequence, tokens computed this step
    start_pos: list[int]  # per sequence, tokens already in the KV cache before this step
    block_tables: list[list[int]]  # per sequence, physical block ids covering [0, context_len)
    block_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Per sequence: its rows verify speculative drafts (every row is sampled, each must match what plain
    # decode computes at that position). Empty: none does.
    verify: list[bool] = field(default_factory=list)
    # Filled by the attention backend's `prepare` once per step and read by every layer.
    attn_metadata: Any = None

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def context_lens(self) -> list[int]:
        return [s + q for s, q in zip(self.start_pos, self.query_lens, strict=True)]

    @property
    def query_start(self) -> list[int]:
        out, acc = [], 0
        for q in self.query_lens:
            out.append(acc)
            acc += q
        return out


def slots_for(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions [start, end) under `block_table`."""
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def build_context(query_lens: list[int], start_pos: list[int], block_tables: list[list[int]],
                  block_size: int, device: torch.device, verify: list[bool] | None = None) -> ForwardContext:
    """Positions and slot mapping for a packed batch, validated against the block tables."""
    positions: list[int] = []
    slots: list[int] = []
    for q, s, table in zip(query_lens, start_pos, block_tables, strict=True):
        if len(table) * block_size < s + q:
            raise ValueError(f"block table of {len(table)} blocks cannot hold {s + q} positions "
                             f"(block_size {block_size})")
        positions.extend(range(s, s + q))
        slots.extend(slots_for(table, s, s + q, block_size))
    return ForwardContext(
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_lens=list(query_lens), start_pos=list(start_pos), block_tables=[list(t) for t in block_tables],
        block_size=block_size, device=device, verify=list(verify or []))
