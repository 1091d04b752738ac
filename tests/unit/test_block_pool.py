"""BlockPool: ref counts, LRU eviction order of cached-but-free blocks, hash map upkeep."""

from __future__ import annotations

import pytest

from serve.engine.kv_cache.block_pool import BlockPool
from serve.engine.kv_cache.hashing import hash_block_tokens


def h(i: int) -> bytes:
    return hash_block_tokens(None, [i])


def test_new_blocks_take_a_reference_and_free_returns_them() -> None:
    pool = BlockPool(4)
    blocks = pool.get_new_blocks(3)
    assert [b.ref_cnt for b in blocks] == [1, 1, 1]
    assert pool.num_free_blocks == 1
    assert pool.usage() == pytest.approx(0.75)
    pool.free_blocks(blocks)
    assert pool.num_free_blocks == 4 and pool.usage() == 0.0
    with pytest.raises(RuntimeError):
        pool.free_blocks(blocks[:1])


def test_asking_for_more_blocks_than_free_raises_without_side_effects() -> None:
    pool = BlockPool(2)
    with pytest.raises(RuntimeError):
        pool.get_new_blocks(3)
    assert pool.num_free_blocks == 2


def test_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    pool = BlockPool(4)
    a, b, c, d = pool.get_new_blocks(4)
    for blk, i in ((a, 1), (b, 2), (c, 3)):
        pool.cache_block(blk, h(i))
    pool.free_blocks([b, a, c])  # b freed first: least recently used
    pool.free_blocks([d])  # d caches nothing: reused before any cached block
    assert pool.free_block_ids() == [d.block_id, b.block_id, a.block_id, c.block_id]
    first, second = pool.get_new_blocks(2)
    assert first is d and second is b
    assert pool.get_cached_block(h(2)) is None  # b's prefix was evicted with it
    assert pool.get_cached_block(h(1)) is a and pool.get_cached_block(h(3)) is c


def test_touch_revives_a_cached_free_block_and_shares_it() -> None:
    pool = BlockPool(2)
    (a,) = pool.get_new_blocks(1)
    pool.cache_block(a, h(7))
    pool.free_blocks([a])
    hit = pool.get_cached_block(h(7))
    pool.touch([hit])
    pool.touch([hit])  # a second request shares it
    assert hit.ref_cnt == 2 and pool.num_free_blocks == 1
    pool.free_blocks([hit])
    assert pool.num_free_blocks == 1  # still held once
    pool.free_blocks([hit])
    assert pool.num_free_blocks == 2


def test_a_duplicate_hash_keeps_the_first_block_cached() -> None:
    pool = BlockPool(2)
    a, b = pool.get_new_blocks(2)
    pool.cache_block(a, h(1))
    pool.cache_block(b, h(1))
    assert pool.get_cached_block(h(1)) is a and b.block_hash is None


def test_caching_disabled_never_hits() -> None:
    pool = BlockPool(2, enable_caching=False)
    (a,) = pool.get_new_blocks(1)
    pool.cache_block(a, h(1))
    assert pool.get_cached_block(h(1)) is None


def test_reset_prefix_cache_only_when_idle() -> None:
    pool = BlockPool(2)
    (a,) = pool.get_new_blocks(1)
    pool.cache_block(a, h(1))
    assert not pool.reset_prefix_cache()
    pool.free_blocks([a])
    assert pool.reset_prefix_cache() and pool.get_cached_block(h(1)) is None


def test_zero_blocks_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        BlockPool(0)
