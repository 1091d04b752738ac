"""BlockPool: fixed-size KV blocks with ref counts, an LRU free list and a hash -> block map.

Invariants:
- A block is in the free list iff its ref count is 0. Free blocks may still hold a cached prefix
  (their hash stays in `cached`) until they are handed out again: that is the eviction.
- The free list is ordered by eviction preference, front first: blocks holding nothing cached go to
  the front (reusing them loses nothing); cached blocks go to the back when freed, so the least
  recently used cached block is evicted first.
- `cached` maps a hash to exactly one block; that block's `block_hash` is the key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from serve.engine.kv_cache.hashing import BlockHash


class KVBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: BlockHash | None = None

    def __repr__(self) -> str:
        return f"KVBlock(id={self.block_id}, ref={self.ref_cnt}, cached={self.block_hash is not None})"


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"a block pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # block_id -> block; OrderedDict gives O(1) removal from the middle (a cache hit on a free block).
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[BlockHash, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        """Fraction of blocks held by requests (cached-but-free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def free_block_ids(self) -> list[int]:
        """Free blocks in eviction order, front first (for tests and debugging)."""
        return list(self._free)

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        return self.cached.get(block_hash) if self.enable_caching else None

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Take a reference on blocks found in the cache (a prefix hit)."""
        for b in blocks:
            if b.ref_cnt == 0:
                del self._free[b.block_id]
            b.ref_cnt += 1

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Hand out `n` blocks from the front of the free list, evicting what they cached."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks with only {len(self._free)} free")
        out = []
        for _ in range(n):
            _, b = self._free.popitem(last=False)
            if b.block_hash is not None:
                del self.cached[b.block_hash]
                b.block_hash = None
            b.ref_cnt = 1
            out.append(b)
        return out

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference each; give the caller's eviction order (first = evicted first)."""
        for b in blocks:
            b.ref_cnt -= 1
            if b.ref_cnt < 0:
                raise RuntimeError(f"block {b.block_id} freed more often than taken")
            if b.ref_cnt == 0:
                self._free[b.block_id] = b
                if b.block_hash is None:
                    self._free.move_to_end(b.block_id, last=False)

    def cache_block(self, block: KVBlock, block_hash: BlockHash) -> None:
        """Register a full block of computed, verified tokens under its chained hash.

        If another block already holds the same hash (two requests computed the same prefix at
        once), the first one stays the cached copy and this block stays private.
        """
        if not self.enable_caching or block.block_hash is not None or block_hash in self.cached:
            return
        block.block_hash = block_hash
        self.cached[block_hash] = block

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix. Only allowed when no block is in use."""
        if len(self._free) != self.num_blocks:
            return False
        for b in self.blocks:
            b.block_hash = None
        self.cached.clear()
        return True
