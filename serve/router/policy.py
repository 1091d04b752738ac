"""Load-balancing policies, chosen by name: which healthy replica takes the next request."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

from serve.router.replica import Replica


class Policy(Protocol):
    def choose(self, replicas: Sequence[Replica], prefix_key: str) -> Replica:
        """Pick one of `replicas` (non-empty, all healthy). `prefix_key` is the prompt's head."""


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, replicas: Sequence[Replica], prefix_key: str) -> Replica:
        r = replicas[self._next % len(replicas)]
        self._next += 1
        return r


class LeastOutstanding:
    """Fewest in-flight requests; ties rotate so equal replicas share the load."""

    def __init__(self) -> None:
        self._rr = RoundRobin()

    def choose(self, replicas: Sequence[Replica], prefix_key: str) -> Replica:
        low = min(r.outstanding for r in replicas)
        return self._rr.choose([r for r in replicas if r.outstanding == low], prefix_key)


class PrefixAffinity:
    """Requests whose prompts share a head go to the same replica, so its prefix/KV cache is reused.

    Rendezvous hashing over replica ids: a replica going down moves only its own prefixes. When the
    preferred replica is far busier than the least-loaded one (by `max_imbalance` requests), the
    request spills over, trading a cache hit for not queueing behind a hot prefix.
    """

    def __init__(self, max_imbalance: int = 8) -> None:
        self.max_imbalance = max_imbalance
        self._fallback = LeastOutstanding()

    def choose(self, replicas: Sequence[Replica], prefix_key: str) -> Replica:
        if not prefix_key:
            return self._fallback.choose(replicas, prefix_key)
        best = max(replicas, key=lambda r: _score(prefix_key, r.replica_id))
        low = min(r.outstanding for r in replicas)
        if best.outstanding - low > self.max_imbalance:
            return self._fallback.choose(replicas, prefix_key)
        return best


def _score(key: str, replica_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{replica_id}\x00{key}".encode(), digest_size=8).digest(), "big")


POLICIES: dict[str, Callable[[], Policy]] = {
    "round-robin": RoundRobin,
    "least-outstanding": LeastOutstanding,
    "prefix-affinity": PrefixAffinity,
}


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[name]()
