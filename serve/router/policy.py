"""Load-balancing policies, chosen by name: which healthy replica takes the next request."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

from serve.router.prefix_table import PrefixTable
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
    """Requests whose prompts share a head go to the replica that served that head, so its prefix/KV
    cache is reused; new heads go to the replica holding the fewest, and a head whose replica runs
    more than `max_imbalance` requests above the least-loaded one spills over (prefix_table.py has
    the rules and why; the Ray request router uses the same table)."""

    def __init__(self, max_imbalance: int = 4) -> None:
        self.table = PrefixTable(max_imbalance=max_imbalance)
        self._fallback = LeastOutstanding()

    def choose(self, replicas: Sequence[Replica], prefix_key: str) -> Replica:
        if not prefix_key:
            return self._fallback.choose(replicas, prefix_key)
        key = hashlib.blake2b(prefix_key.encode(), digest_size=16).hexdigest()  # bounded table memory
        by_id = {r.replica_id: r for r in replicas}
        return by_id[self.table.rank(key, {r.replica_id: r.outstanding for r in replicas})[0]]


POLICIES: dict[str, Callable[[], Policy]] = {
    "round-robin": RoundRobin,
    "least-outstanding": LeastOutstanding,
    "prefix-affinity": PrefixAffinity,
}


def make_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[name]()
