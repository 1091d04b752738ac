"""KVCacheManager: which blocks each request holds, prefix-cache lookup and slot allocation.

Per request it keeps the block list and a parallel list of block ids (the block table handed to the
runner without copying). Only full blocks of computed, verified tokens are registered in the cache;
draft-token (lookahead) slots are allocated but never cached until their tokens are accepted.
"""

from __future__ import annotations

from serve.engine.kv_cache.block_pool import BlockPool, KVBlock
from serve.engine.kv_cache.hashing import extend_block_hashes
from serve.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self._blocks: dict[str, list[KVBlock]] = {}
        self._block_ids: dict[str, list[int]] = {}
        self._num_cached: dict[str, int] = {}  # leading blocks of a request already registered
        self.prefix_cache_queries = 0  # prompt tokens looked up
        self.prefix_cache_hits = 0  # of those, tokens found cached

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def block_ids(self, req_id: str) -> list[int]:
        """The request's block table. A live view while it holds blocks (the runner must not keep it
        past the step); an empty list for a request that holds none."""
        return self._block_ids.get(req_id, [])

    def num_tracked_requests(self) -> int:
        """Requests with any bookkeeping here (0 once every request is freed: no leaks)."""
        return len(self._blocks.keys() | self._block_ids.keys() | self._num_cached.keys())

    def num_blocks_of(self, req_id: str) -> int:
        return len(self._blocks.get(req_id, ()))

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of the request's tokens: (blocks, number of tokens they cover).

        At most `num_tokens - 1` tokens are reported, so a fully cached prompt still computes its last
        token (the step needs its logits). The caller counts the lookup with `record_prefix_query`
        once the request is admitted (a lookup retried next step must not count twice).
        """
        if not self.enable_caching:
            return [], 0
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size,
                            request.extra_keys)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        for h in request.block_hashes[:max_blocks]:
            block = self.pool.get_cached_block(h)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def record_prefix_query(self, num_tokens: int, num_hit_tokens: int) -> None:
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += num_hit_tokens

    def can_allocate(self, request: Request, num_new_tokens: int,
                     new_computed_blocks: list[KVBlock] | tuple[()] = (), num_lookahead_tokens: int = 0) -> bool:
        return self._num_needed(request, num_new_tokens, new_computed_blocks, num_lookahead_tokens) >= 0

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       new_computed_blocks: list[KVBlock] | tuple[()] = (),
                       num_lookahead_tokens: int = 0) -> bool:
        """Make the block table cover `num_new_tokens + num_lookahead_tokens` more positions.

        `new_computed_blocks` (from get_computed_blocks) are taken first; the request's
        num_computed_tokens does not include them yet. Returns False, changing nothing, when the pool
        cannot supply the blocks.
        """
        blocks = self._blocks.setdefault(request.req_id, [])
        if not new_computed_blocks and (request.num_computed_tokens + num_new_tokens + num_lookahead_tokens
                                        <= len(blocks) * self.block_size):
            return True  # the common decode step: the last block still has room
        need = self._num_needed(request, num_new_tokens, new_computed_blocks, num_lookahead_tokens)
        if need < 0:
            return False
        ids = self._block_ids.setdefault(request.req_id, [])
        if new_computed_blocks:
            self.pool.touch(new_computed_blocks)
            blocks.extend(new_computed_blocks)
            ids.extend(b.block_id for b in new_computed_blocks)
            # They are cached by definition: registering stops at the first uncached one.
            self._num_cached[request.req_id] = len(blocks)
        if need:
            new = self.pool.get_new_blocks(need)
            blocks.extend(new)
            ids.extend(b.block_id for b in new)
        return True

    def _num_needed(self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVBlock] | tuple[()],
                    num_lookahead_tokens: int) -> int:
        """New blocks the allocation needs, or -1 when the pool cannot supply them."""
        held = len(self._blocks.get(request.req_id, ())) + len(new_computed_blocks)
        total = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        need = max(0, cdiv(total + num_new_tokens + num_lookahead_tokens, self.block_size) - held)
        # Hit blocks with ref 0 sit in the free list: touching them removes them from it.
        evictable_hits = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        return need if need <= self.pool.num_free_blocks - evictable_hits else -1

    def cache_full_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Register every full block of the first `num_computed_tokens` (computed, verified) tokens."""
        if not self.enable_caching:
            return
        blocks = self._blocks.get(request.req_id)
        if not blocks:
            return
        # Tokens past the end of all_token_ids (accepted drafts cut by a stop) are never cached.
        num_full = min(min(num_computed_tokens, request.num_tokens) // self.block_size, len(blocks))
        start = self._num_cached.get(request.req_id, 0)
        if num_full <= start:
            return
        extend_block_hashes(request.block_hashes, request.all_token_ids, self.block_size, request.extra_keys)
        for i in range(start, num_full):
            self.pool.cache_block(blocks[i], request.block_hashes[i])
        self._num_cached[request.req_id] = num_full

    def share_prefix(self, src: Request, dst: Request, num_blocks: int) -> int:
        """Give `dst` references to the first `num_blocks` blocks of `src` (n > 1 samples share the
        prompt). `dst` must hold no blocks. Returns the number of tokens now computed for `dst`."""
        if self._blocks.get(dst.req_id):
            raise RuntimeError(f"{dst.req_id} already holds blocks")
        shared = self._blocks.get(src.req_id, [])[:num_blocks]
        self.pool.touch(shared)
        self._blocks[dst.req_id] = list(shared)
        self._block_ids[dst.req_id] = [b.block_id for b in shared]
        self._num_cached[dst.req_id] = min(self._num_cached.get(src.req_id, 0), len(shared))
        return len(shared) * self.block_size

    def free(self, request: Request) -> None:
        """Release the request's blocks. Tail blocks go first in eviction order: a prefix's head is
        the part most likely to be shared again."""
        blocks = self._blocks.pop(request.req_id, None)
        self._block_ids.pop(request.req_id, None)
        self._num_cached.pop(request.req_id, None)
        if blocks:
            self.pool.free_blocks(reversed(blocks))
