"""Chained block hashes for automatic prefix caching.

A full block's hash covers its parent's hash, its own tokens and `extra_keys` (anything else that
changes the KV: a cache salt, an adapter id). Because the parent hash is inside, equal hashes mean
equal whole prefixes, so a hit on block i implies hits on blocks 0..i-1.

We use sha256 over a pickled tuple rather than Python's `hash()`: a collision here would silently
serve another prompt's KV (wrong output, no error), and a 64-bit hash of attacker-chosen token
sequences is too weak for that. Pickle of a tuple of ints/bytes/str is deterministic across runs and
processes, so hashes are stable too (no PYTHONHASHSEED dependence). Cost: ~1-2 us per 16-token block,
paid once per block per request.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import Any

BlockHash = bytes  # 32-byte sha256 digest


def hash_block_tokens(parent: BlockHash | None, tokens: Sequence[int],
                      extra_keys: tuple[Any, ...] | None = None) -> BlockHash:
    payload = pickle.dumps((parent, tuple(tokens), extra_keys), protocol=5)
    return hashlib.sha256(payload).digest()


def extend_block_hashes(hashes: list[BlockHash], token_ids: Sequence[int], block_size: int,
                        extra_keys: tuple[Any, ...] | None = None) -> None:
    """Append the hashes of every full block of `token_ids` not hashed yet (in place).

    `extra_keys` go into the first block only; the chain carries them into every later block.
    """
    num_full = len(token_ids) // block_size
    for i in range(len(hashes), num_full):
        parent = hashes[i - 1] if i else None
        block = token_ids[i * block_size:(i + 1) * block_size]
        hashes.append(hash_block_tokens(parent, block, extra_keys if i == 0 else None))
