"""Randomised scheduling on the FAKE paged runner: arrivals, aborts, n > 1, priorities, drafts, a
small pool and a small budget. Every request that was not aborted must produce exactly what it
produces alone, and every block must come back."""

from __future__ import annotations

import random

import pytest

from tests.unit.fake_runner import reference_continuation
from tests.unit.sched_helpers import add, assert_no_leaks, make, step


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_random_workload_matches_the_reference_without_leaks(seed: int, policy: str) -> None:
    rng = random.Random(seed)
    caching = seed % 3 != 0
    sched, runner = make(num_blocks=14, block_size=4, max_num_batched_tokens=rng.choice([6, 16, 64]),
                         max_num_seqs=rng.choice([2, 4, 8]), policy=policy, caching=caching,
                         enable_chunked_prefill=seed % 4 != 1)
    shared_prefix = [rng.randrange(101) for _ in range(9)]
    requests, aborted = [], set()
    for i in range(40):
        for _ in range(rng.choice([0, 0, 1, 2])):
            prompt = (shared_prefix if rng.random() < 0.5 else []) + [rng.randrange(101) for _ in range(rng.randrange(1, 14))]
            group = add(sched, f"q{len(requests)}", prompt, max_tokens=rng.randrange(1, 12),
                        n=rng.choice([1, 1, 2, 3]), priority=rng.randrange(3), arrival=float(i))
            requests.append(group)
        for req in list(sched.running):  # greedy drafts: some right, some wrong
            if rng.random() < 0.3:
                ref = reference_continuation(req.all_token_ids, 3)
                req.spec_token_ids = [t if rng.random() < 0.7 else (t + 1) % 101 for t in ref[1:]]
        if sched.requests and rng.random() < 0.1:
            victim = rng.choice(list(sched.requests))
            aborted.add(victim)
            sched.abort([victim])
        step(sched, runner)
    for _ in range(2000):
        if not sched.has_unfinished():
            break
        step(sched, runner)
    assert not sched.has_unfinished(), "livelock or deadlock"
    for group in requests:
        for req in group:
            if req.req_id not in aborted:
                assert req.output_token_ids == reference_continuation(req.prompt_token_ids, req.max_tokens)
    assert_no_leaks(sched)
    if sched.num_preemptions == 0 and seed == 0:
        pytest.fail("the workload is meant to preempt: make the pool smaller")
