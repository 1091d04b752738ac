"""PrefixTable, the placement rule behind the Ray prefix-affinity router: pure Python, no Ray."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from serve.router.prefix_table import PrefixTable

KEYS = [f"prefix-{i}" for i in range(4)]


def idle(n: int) -> dict[str, int]:
    return {f"r{i}": 0 for i in range(n)}


def test_new_prefixes_split_evenly_over_idle_replicas() -> None:
    """Four prefixes over two idle replicas: 2-2, whatever the hash says (rendezvous gave 3-1)."""
    t = PrefixTable()
    homes = [t.rank(k, idle(2))[0] for k in KEYS]
    assert Counter(homes) == {"r0": 2, "r1": 2}
    assert t.held("r0") == t.held("r1") == 2


def test_a_known_prefix_returns_to_its_replica_in_any_order() -> None:
    t, loads = PrefixTable(), idle(3)
    home = {k: t.rank(k, loads)[0] for k in KEYS}
    rng = random.Random(0)
    for _ in range(50):
        k = rng.choice(KEYS)
        assert t.rank(k, loads)[0] == home[k]
    assert len(t) == 4 and sum(t.held(r) for r in loads) == 4  # repeats add nothing


def test_a_new_prefix_goes_to_the_replica_with_fewest_prefixes_while_load_is_balanced() -> None:
    """A tokenize call in flight makes a replica look one busier: that must not pile prefixes up."""
    t = PrefixTable(max_imbalance=2)
    t.record("x", "r0")
    t.record("y", "r1")
    assert t.rank("a", {"r0": 0, "r1": 1, "r2": 2}) == ["r2", "r0", "r1"]  # r2 holds none
    assert t.rank("b", {"r0": 2, "r1": 0, "r2": 1})[0] == "r1"  # 1 each: then the least loaded


def test_a_new_prefix_goes_to_the_least_loaded_replica_when_load_is_not_balanced() -> None:
    t = PrefixTable(max_imbalance=2)
    t.record("x", "r1")
    assert t.rank("a", {"r0": 4, "r1": 1, "r2": 2}) == ["r1", "r2", "r0"]


def test_four_prefixes_split_two_two_despite_noisy_loads() -> None:
    t = PrefixTable()
    rng = random.Random(1)
    homes = [t.rank(k, {"r0": rng.randint(0, 1), "r1": rng.randint(0, 1)})[0] for k in KEYS]
    assert Counter(homes) == {"r0": 2, "r1": 2}


def test_ranking_lists_every_replica_holders_first_after_the_choice() -> None:
    t = PrefixTable(max_imbalance=1)
    t.record("a", "r2")
    t.record("a", "r0")
    ranked = t.rank("a", {"r0": 1, "r1": 0, "r2": 5, "r3": 0})
    assert ranked[0] == "r0"  # within 1 of the least loaded: stays with a holder
    assert set(ranked) == {"r0", "r1", "r2", "r3"} and ranked[1] == "r2"


def test_bounded_load_spills_a_hot_prefix_and_remembers_the_second_holder() -> None:
    t = PrefixTable(max_imbalance=2)
    home = t.rank("hot", idle(2))[0]
    other = "r1" if home == "r0" else "r0"
    assert t.rank("hot", {home: 2, other: 0})[0] == home  # 2 above the least loaded: still sticky
    assert t.rank("hot", {home: 3, other: 0})[0] == other  # 3 above: spills
    assert t.holders("hot") == [home, other]
    assert t.rank("hot", {home: 3, other: 1})[0] == other  # the least-loaded holder now
    assert t.rank("hot", {home: 1, other: 1})[0] == home  # ties go to the first holder


def test_zero_imbalance_always_takes_the_least_loaded() -> None:
    t = PrefixTable(max_imbalance=0)
    t.record("a", "r0")
    assert t.rank("a", {"r0": 1, "r1": 0})[0] == "r1"
    assert t.rank("a", {"r0": 0, "r1": 0})[0] == "r0"


def test_a_lost_replica_gives_up_its_prefixes_and_only_those_move() -> None:
    t, loads = PrefixTable(), idle(3)
    keys = [f"k{i}" for i in range(30)]
    before = {k: t.rank(k, loads)[0] for k in keys}
    t.retain(["r0", "r2"])
    assert t.held("r1") == 0
    after = {k: t.rank(k, {"r0": 0, "r2": 0})[0] for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "r1")
    assert {after[k] for k in keys if before[k] == "r1"} <= {"r0", "r2"}
    assert abs(t.held("r0") - t.held("r2")) <= 1  # the orphans went to the emptier one first


def test_a_dead_replica_missing_from_loads_is_skipped_before_retain() -> None:
    t = PrefixTable()
    t.record("a", "gone")
    assert t.rank("a", {"r0": 0, "r1": 0})[0] in {"r0", "r1"}


def test_a_new_replica_takes_new_prefixes_and_keeps_old_ones_in_place() -> None:
    t = PrefixTable()
    old = {k: t.rank(k, idle(2))[0] for k in KEYS}
    three = idle(3)
    assert all(t.rank(k, three)[0] == old[k] for k in KEYS)
    assert t.rank("fresh", three)[0] == "r2"  # the empty replica wins the tie on prefixes held


def test_capacity_forgets_the_least_recently_routed_prefix() -> None:
    t = PrefixTable(capacity=2)
    t.rank("a", idle(2))
    t.rank("b", idle(2))
    t.rank("a", idle(2))  # a is recent again
    t.rank("c", idle(2))
    assert t.holders("b") == [] and t.holders("a") and t.holders("c")
    assert len(t) == 2 and t.held("r0") + t.held("r1") == 2


def test_no_replicas_no_ranking_and_bad_settings_are_errors() -> None:
    assert PrefixTable().rank("a", {}) == []
    with pytest.raises(ValueError):
        PrefixTable(max_imbalance=-1)
