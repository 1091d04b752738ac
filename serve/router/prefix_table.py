"""Cache-aware placement of prompt prefixes on engine replicas, with bounded load: one table for both
the single-process router (policy.py) and the Ray Serve request router (cluster/routers.py).

The table remembers which replicas have served each prefix key (a hash of the prompt's head: its
first `prefix_tokens` token ids on Ray, its first 1024 characters in one process) and so hold its KV. A known key goes to the least-loaded of its replicas,
unless that one runs more than `max_imbalance` requests above the least-loaded replica of all: then
it spills to the least-loaded replica, which becomes one of its holders too (a hot prefix spreads
over as many replicas as its load needs). A new key goes to the replica holding the fewest keys while
loads are balanced (no replica more than `max_imbalance` above the least loaded), else to the
least-loaded one; the other measure, then a rendezvous score of the key, break ties. Four prefixes
over two replicas thus split 2-2, where a plain hash may put three on one (and there thrash its
slots); keys held rather than load decide when load is balanced because a count of ongoing requests
is noisy by one or two (a tokenize call in flight) while the keys a replica holds are what its
cache has to keep.

Replicas that go away lose their keys (`retain`); new ones start empty and so take new keys first.
The key set is bounded (least recently routed keys are forgotten). The rules follow SGLang's
cache-aware router and Ray Serve LLM's prefix-cache-affinity router: match the prefix while load is
balanced, balance load when it is not.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping


def rendezvous(key: str, replica: str) -> int:
    """Highest-random-weight score of `key` on `replica`: a stable tie-break every router agrees on."""
    return int.from_bytes(hashlib.blake2b(f"{replica}\x00{key}".encode(), digest_size=8).digest(), "big")


class PrefixTable:
    def __init__(self, max_imbalance: int = 4, capacity: int = 100_000) -> None:
        if max_imbalance < 0 or capacity < 1:
            raise ValueError("PrefixTable needs max_imbalance >= 0 and capacity >= 1")
        self.max_imbalance, self.capacity = max_imbalance, capacity
        self._holders: OrderedDict[str, list[str]] = OrderedDict()  # key -> replica ids, LRU order
        self._held: Counter[str] = Counter()  # replica id -> keys it holds

    def __len__(self) -> int:
        return len(self._holders)

    def holders(self, key: str) -> list[str]:
        return list(self._holders.get(key, ()))

    def held(self, replica: str) -> int:
        return self._held[replica]

    def rank(self, key: str, loads: Mapping[str, int]) -> list[str]:
        """Replica ids (the keys of `loads`: live replicas -> ongoing requests), best first, for a
        request with prefix `key`; the first is recorded as a holder of `key`. Serve tries them in
        order, so the rest are the spill-over when the first is full."""
        if not loads:
            return []
        low = min(loads.values())
        if max(loads.values()) - low <= self.max_imbalance:
            order = sorted(loads, key=lambda r: (self._held[r], loads[r], -rendezvous(key, r)))
        else:
            order = sorted(loads, key=lambda r: (loads[r], self._held[r], -rendezvous(key, r)))
        holders = [r for r in self._holders.get(key, ()) if r in loads]
        first = order[0]
        if holders:
            home = min(holders, key=lambda r: (loads[r], holders.index(r)))
            if loads[home] - low <= self.max_imbalance:
                first = home
        self.record(key, first)
        return [first, *sorted((r for r in order if r != first), key=lambda r: r not in holders)]

    def record(self, key: str, replica: str) -> None:
        """`replica` served (or is about to serve) `key`: it holds that prefix from now on."""
        holders = self._holders.setdefault(key, [])
        self._holders.move_to_end(key)
        if replica not in holders:
            holders.append(replica)
            self._held[replica] += 1
        while len(self._holders) > self.capacity:
            _, gone = self._holders.popitem(last=False)
            self._drop_holders(gone)

    def retain(self, live: Iterable[str]) -> None:
        """Forget replicas not in `live` (scaled down, died): their keys go to others when next seen."""
        live = set(live)
        dead = [r for r in self._held if r not in live]
        if not dead:
            return
        for key in list(self._holders):
            holders = self._holders[key]
            holders[:] = [r for r in holders if r in live]
            if not holders:
                del self._holders[key]
        for r in dead:
            del self._held[r]

    def _drop_holders(self, holders: list[str]) -> None:
        for r in holders:
            self._held[r] -= 1
            if self._held[r] <= 0:
                del self._held[r]
