"""KVCacheManager: prefix lookup through chained hashes, slot allocation, sharing, no leaks."""

from __future__ import annotations

from serve.engine.kv_cache.hashing import extend_block_hashes, hash_block_tokens
from serve.engine.kv_cache.manager import KVCacheManager
from serve.engine.request import Request
from serve.sampling_params import SamplingParams

BS = 4


def req(rid: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(rid, tokens, SamplingParams(), max_tokens=8, cache_salt=salt)


def compute(kv: KVCacheManager, r: Request) -> None:
    """Allocate and 'compute' the whole prompt the way the scheduler does after a step."""
    hits, n = kv.get_computed_blocks(r)
    assert kv.allocate_slots(r, r.num_tokens - n, hits)
    r.num_computed_tokens = r.num_tokens
    kv.cache_full_blocks(r, r.num_computed_tokens)


def test_chained_hash_differs_when_the_parent_differs() -> None:
    a: list[bytes] = []
    b: list[bytes] = []
    extend_block_hashes(a, [1, 2, 3, 4, 9, 9, 9, 9], BS)
    extend_block_hashes(b, [1, 2, 3, 5, 9, 9, 9, 9], BS)
    assert a[1] != b[1]  # same tokens in block 1, different history
    assert hash_block_tokens(None, [9, 9, 9, 9]) != hash_block_tokens(a[0], [9, 9, 9, 9])
    assert hash_block_tokens(None, [1], ("salt",)) != hash_block_tokens(None, [1])
    assert hash_block_tokens(a[0], [5]) == hash_block_tokens(a[0], [5])  # stable


def test_a_second_request_reuses_every_cached_full_block_of_its_prefix() -> None:
    kv = KVCacheManager(16, BS)
    a = req("a", list(range(10)))
    compute(kv, a)
    b = req("b", list(range(10)) + [50, 51])
    hits, n = kv.get_computed_blocks(b)
    assert n == 8 and [x.block_id for x in hits] == kv.block_ids("a")[:2]
    assert kv.allocate_slots(b, b.num_tokens - n, hits)
    assert kv.block_ids("b")[:2] == kv.block_ids("a")[:2]
    assert [x.ref_cnt for x in hits] == [2, 2]


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    kv = KVCacheManager(16, BS)
    a = req("a", list(range(8)))
    compute(kv, a)
    hits, n = kv.get_computed_blocks(req("b", list(range(8))))
    assert n == 4 and len(hits) == 1  # block 2 would leave zero tokens to compute


def test_a_different_first_block_or_salt_misses() -> None:
    kv = KVCacheManager(16, BS)
    compute(kv, req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    assert kv.get_computed_blocks(req("b", [0, 2, 3, 4, 5, 6, 7, 8, 9]))[1] == 0
    assert kv.get_computed_blocks(req("c", [1, 2, 3, 4, 5, 6, 7, 8, 9], salt="x"))[1] == 0
    assert kv.get_computed_blocks(req("d", [1, 2, 3, 4, 5, 6, 7, 8, 9]))[1] == 8


def test_freed_blocks_stay_hits_until_evicted() -> None:
    kv = KVCacheManager(3, BS)
    a = req("a", list(range(9)))
    compute(kv, a)
    kv.free(a)
    assert kv.num_free_blocks() == 3
    assert kv.get_computed_blocks(req("b", list(range(9))))[1] == 8
    c = req("c", [7] * 12)  # needs all 3 blocks: evicts a's
    compute(kv, c)
    kv.free(c)
    assert kv.get_computed_blocks(req("d", list(range(9))))[1] == 0


def test_failed_allocation_changes_nothing() -> None:
    kv = KVCacheManager(2, BS)
    r = req("a", list(range(12)))
    assert not kv.allocate_slots(r, 12)
    assert kv.num_free_blocks() == 2 and kv.block_ids("a") == []


def test_a_hit_on_a_free_block_counts_against_the_free_pool() -> None:
    kv = KVCacheManager(3, BS)
    a = req("a", list(range(9)))
    compute(kv, a)
    kv.free(a)
    b = req("b", list(range(8)) + [100] * 8)  # 2 hits (free, evictable) + 2 new blocks = 4 > 3
    hits, n = kv.get_computed_blocks(b)
    assert n == 8 and not kv.allocate_slots(b, b.num_tokens - n, hits)
    assert kv.num_free_blocks() == 3


def test_lookahead_slots_are_allocated_but_never_cached() -> None:
    kv = KVCacheManager(8, BS)
    r = req("a", [1, 2, 3])
    assert kv.allocate_slots(r, 3, num_lookahead_tokens=3)  # 6 positions -> 2 blocks
    assert len(kv.block_ids("a")) == 2
    r.num_computed_tokens = 3
    kv.cache_full_blocks(r, 6)  # only 3 verified tokens exist: nothing full to cache
    assert not kv.pool.cached


def test_share_prefix_and_no_leaks_after_everything_is_freed() -> None:
    kv = KVCacheManager(8, BS, enable_caching=False)
    leader = req("a", list(range(10)))
    assert kv.allocate_slots(leader, 10)
    sib = req("b", list(range(10)))
    assert kv.share_prefix(leader, sib, 2) == 8
    assert kv.block_ids("b") == kv.block_ids("a")[:2]
    assert kv.pool.blocks[kv.block_ids("a")[0]].ref_cnt == 2
    kv.free(leader)
    assert kv.num_free_blocks() == 8 - 2
    kv.free(sib)
    assert kv.num_free_blocks() == 8 and all(b.ref_cnt == 0 for b in kv.pool.blocks)
