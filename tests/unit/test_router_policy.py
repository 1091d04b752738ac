"""Router policies: round-robin, least-outstanding, and prefix affinity (the cache-aware prefix table)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from serve.router.policy import POLICIES, LeastOutstanding, PrefixAffinity, RoundRobin, make_policy
from serve.router.replica import Replica


def replicas(n: int, outstanding: list[int] | None = None) -> list[Replica]:
    # Policies read only ids and counters; no backend is needed (None stands in for one).
    backend: Any = None
    loads = outstanding or [0] * n
    return [Replica(model="m", replica_id=f"m/{i}:fake", backend=backend, healthy=True, outstanding=loads[i])
            for i in range(n)]


def ids(chosen: list[Replica]) -> list[str]:
    return [r.replica_id[2] for r in chosen]


def test_round_robin_cycles() -> None:
    rs, rr = replicas(3), RoundRobin()
    assert ids([rr.choose(rs, "") for _ in range(7)]) == list("0120120")


def test_round_robin_keeps_going_when_the_set_shrinks() -> None:
    rs, rr = replicas(3), RoundRobin()
    rr.choose(rs, "")
    chosen = ids([rr.choose(rs[:2], "") for _ in range(4)])
    assert sorted(Counter(chosen).values()) == [2, 2]


def test_least_outstanding_picks_the_least_loaded() -> None:
    lo = LeastOutstanding()
    assert ids([lo.choose(replicas(3, [4, 1, 2]), "")]) == ["1"]
    assert ids([lo.choose(replicas(3, [0, 5, 5]), "")]) == ["0"]


def test_least_outstanding_rotates_ties() -> None:
    lo, rs = LeastOutstanding(), replicas(3, [3, 1, 1])
    assert ids([lo.choose(rs, "") for _ in range(4)]) == ["1", "2", "1", "2"]


def test_least_outstanding_follows_load_as_it_changes() -> None:
    lo, rs = LeastOutstanding(), replicas(3)
    for _ in range(9):  # every pick adds one request to the chosen replica: load stays balanced
        lo.choose(rs, "").outstanding += 1
    assert [r.outstanding for r in rs] == [3, 3, 3]


KEYS = [f"system prompt {i}\x00user says {i * 7919}" for i in range(200)]


def test_prefix_affinity_same_key_same_replica_regardless_of_order() -> None:
    pa, rs = PrefixAffinity(), replicas(4)
    rng = random.Random(0)
    for key in KEYS[:50]:
        first = pa.choose(rs, key)
        for _ in range(3):
            shuffled = rs[:]
            rng.shuffle(shuffled)
            assert pa.choose(shuffled, key) is first


def test_prefix_affinity_spreads_different_keys() -> None:
    pa, rs = PrefixAffinity(), replicas(4)
    counts = Counter(pa.choose(rs, k).replica_id for k in KEYS)
    # New heads go to the replica holding the fewest: an exact split, where a hash would be binomial.
    assert sorted(counts.values()) == [50, 50, 50, 50], counts


def test_prefix_affinity_removing_a_replica_moves_only_its_keys() -> None:
    pa, rs = PrefixAffinity(), replicas(4)
    before = {k: pa.choose(rs, k).replica_id for k in KEYS}
    gone = rs[2].replica_id
    after = {k: pa.choose([r for r in rs if r.replica_id != gone], k).replica_id for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == gone}
    assert len(moved) > 0
    assert len({after[k] for k in moved}) > 1  # the orphaned keys spread over the survivors


def test_prefix_affinity_adding_a_replica_keeps_known_keys_and_takes_new_ones() -> None:
    pa, rs = PrefixAffinity(), replicas(5)
    before = {k: pa.choose(rs[:4], k).replica_id for k in KEYS[:100]}
    after = {k: pa.choose(rs, k).replica_id for k in KEYS[:100]}
    assert after == before  # their KV stays where it is: nothing moves to the empty replica
    fresh = [pa.choose(rs, k).replica_id for k in KEYS[100:125]]
    assert fresh == [rs[4].replica_id] * 25  # it holds the fewest heads until it has caught up


def test_prefix_affinity_spills_over_when_preferred_replica_is_overloaded() -> None:
    pa, rs = PrefixAffinity(max_imbalance=8), replicas(3)
    key = KEYS[0]
    preferred = pa.choose(rs, key)
    preferred.outstanding = 8  # at the limit: still sticky
    assert pa.choose(rs, key) is preferred
    preferred.outstanding = 9  # beyond it: go to the least loaded
    spilled = pa.choose(rs, key)
    assert spilled is not preferred and spilled.outstanding == 0


def test_prefix_affinity_imbalance_is_relative_to_the_least_loaded() -> None:
    pa, rs = PrefixAffinity(max_imbalance=2), replicas(3)
    key = KEYS[1]
    preferred = pa.choose(rs, key)
    for r in rs:
        r.outstanding = 10
    preferred.outstanding = 12
    assert pa.choose(rs, key) is preferred


def test_prefix_affinity_empty_key_uses_least_outstanding() -> None:
    pa, rs = PrefixAffinity(), replicas(3, [2, 0, 1])
    assert pa.choose(rs, "") is rs[1]


@pytest.mark.parametrize(("name", "cls"), [("round-robin", RoundRobin), ("least-outstanding", LeastOutstanding),
                                           ("prefix-affinity", PrefixAffinity)])
def test_make_policy_by_name(name: str, cls: type) -> None:
    assert isinstance(make_policy(name), cls)
    assert make_policy(name) is not make_policy(name)  # each model group gets its own state


def test_make_policy_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown policy 'random'") as info:
        make_policy("random")
    for name in POLICIES:
        assert name in str(info.value)
