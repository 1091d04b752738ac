"""Scheduler on ints only, driven by the FAKE paged runner (tests/unit/fake_runner.py)."""

from __future__ import annotations

import pytest

from serve.engine.request import RequestRejected, RequestStatus
from tests.unit.fake_runner import reference_continuation
from tests.unit.sched_helpers import add, assert_no_leaks, make, run, step

PROMPTS = [list(range(1, 4)), list(range(10, 27)), [5] * 9, list(range(40, 80)), [3, 1, 4, 1, 5, 9, 2, 6]]


def test_batched_equals_one_at_a_time_and_the_reference() -> None:
    sched, runner = make(max_num_batched_tokens=16)
    for i, p in enumerate(PROMPTS):
        add(sched, f"r{i}", p, max_tokens=7)
    together = run(sched, runner)
    assert_no_leaks(sched)
    for i, p in enumerate(PROMPTS):
        alone_sched, alone_runner = make(max_num_batched_tokens=512)
        add(alone_sched, "x", p, max_tokens=7)
        assert run(alone_sched, alone_runner)["x"] == together[f"r{i}"] == reference_continuation(p, 7)


def test_chunked_prefill_respects_the_budget_while_decodes_keep_running() -> None:
    sched, runner = make(max_num_batched_tokens=8)
    short = add(sched, "short", [1, 2], max_tokens=20)[0]
    step(sched, runner)  # short is now decoding
    add(sched, "long", list(range(30)), max_tokens=2)
    out = run(sched, runner)
    long_chunks = [s for b in runner.batches for s in b.seqs if s.req_id == "long"]
    assert all(b.num_tokens <= 8 for b in runner.batches)
    assert [len(s.token_ids) for s in long_chunks][:4] == [7, 7, 7, 7]  # 1 token of budget went to "short"
    assert [s.num_logits for s in long_chunks[:4]] == [0, 0, 0, 0]
    assert all(any(s.req_id == "short" for s in runner.batches[i].seqs) for i in range(1, 5))
    assert out["long"] == reference_continuation(list(range(30)), 2)
    assert short.output_token_ids == reference_continuation([1, 2], 20)


def test_without_chunked_prefill_a_prompt_waits_for_room_but_still_runs() -> None:
    sched, runner = make(max_num_batched_tokens=8, enable_chunked_prefill=False)
    add(sched, "a", [1, 2, 3], max_tokens=3)
    add(sched, "big", list(range(20)), max_tokens=3)  # larger than the whole budget
    out = run(sched, runner)
    assert out["big"] == reference_continuation(list(range(20)), 3)
    firsts = [s for b in runner.batches for s in b.seqs if s.req_id == "big"][:1]
    assert firsts[0].start_pos == 0 and len(firsts[0].token_ids) == 8


def test_max_num_seqs_caps_the_batch() -> None:
    sched, runner = make(max_num_seqs=2)
    for i in range(5):
        add(sched, f"r{i}", [i + 1, 2, 3], max_tokens=4)
    run(sched, runner)
    assert max(len(b.seqs) for b in runner.batches) == 2
    assert_no_leaks(sched)


def test_preemption_when_blocks_run_out_recovers_with_identical_output() -> None:
    sched, runner = make(num_blocks=10, max_num_batched_tokens=64)  # 40 slots; 4 x 18 tokens need 72
    prompts = [[i, i + 1, i + 2, 7, 7, 7, 7, i] for i in range(4)]
    for i, p in enumerate(prompts):
        add(sched, f"r{i}", p, max_tokens=10)
    out = run(sched, runner)
    assert sched.num_preemptions > 0
    for i, p in enumerate(prompts):
        assert out[f"r{i}"] == reference_continuation(p, 10)
    assert_no_leaks(sched)


def test_fcfs_preempts_the_newest_running_request() -> None:
    sched, runner = make(num_blocks=6, max_num_batched_tokens=64)
    old = add(sched, "old", [1, 2, 3, 4, 5, 6, 7], max_tokens=12)[0]
    new = add(sched, "new", [9, 8, 7, 6, 5, 4, 3], max_tokens=12)[0]
    while not sched.num_preemptions:
        step(sched, runner)
    assert new.num_preemptions == 1 and old.num_preemptions == 0
    run(sched, runner)
    assert_no_leaks(sched)


def test_priority_admits_lower_values_first_and_preempts_the_highest() -> None:
    sched, runner = make(num_blocks=6, max_num_seqs=8, policy="priority")
    low = add(sched, "low", [1, 2, 3, 4, 5, 6, 7], max_tokens=12, priority=5, arrival=1.0)[0]
    high = add(sched, "high", [9, 8, 7, 6, 5, 4, 3], max_tokens=12, priority=0, arrival=2.0)[0]
    first = sched.schedule()
    assert [s.req_id for s in first.seqs] == ["high", "low"]
    sched.update(first, runner.execute(first))
    while not sched.num_preemptions:
        step(sched, runner)
    assert low.num_preemptions == 1 and high.num_preemptions == 0
    run(sched, runner)
    assert low.output_token_ids == reference_continuation([1, 2, 3, 4, 5, 6, 7], 12)
    assert high.output_token_ids == reference_continuation([9, 8, 7, 6, 5, 4, 3], 12)
    assert_no_leaks(sched)


def test_a_repeated_prompt_hits_the_prefix_cache_with_the_same_output() -> None:
    sched, runner = make()
    prompt = list(range(20, 42))
    add(sched, "a", prompt, max_tokens=6)
    first = run(sched, runner)["a"]
    b = add(sched, "b", prompt, max_tokens=6)[0]
    assert run(sched, runner)["b"] == first
    assert b.num_cached_tokens == 20  # 5 full blocks; the 22nd token is recomputed
    assert sched.kv.prefix_cache_queries == 44 and sched.kv.prefix_cache_hits == 20
    assert_no_leaks(sched)


def test_prefix_caching_off_gives_the_same_output_without_hits() -> None:
    sched, runner = make(caching=False)
    prompt = list(range(20, 42))
    add(sched, "a", prompt, max_tokens=6)
    add(sched, "b", prompt, max_tokens=6)
    out = run(sched, runner)
    assert out["a"] == out["b"] == reference_continuation(prompt, 6)
    assert sched.kv.prefix_cache_hits == 0


def test_n_samples_share_the_prompt_blocks_of_the_leader() -> None:
    sched, runner = make(max_num_batched_tokens=64, caching=False)
    prompt = list(range(10))
    group = add(sched, "g", prompt, max_tokens=4, n=3)
    step(sched, runner)  # leader prefill; siblings get its 2 full prompt blocks
    step(sched, runner)  # siblings compute only their last 2 prompt tokens
    tables = [sched.kv.block_ids(r.req_id) for r in group]
    assert tables[1][:2] == tables[2][:2] == tables[0][:2]
    assert sched.kv.pool.blocks[tables[0][0]].ref_cnt == 3
    sib_first = [s for s in runner.batches[1].seqs if s.req_id == "g#1"][0]
    assert sib_first.start_pos == 8 and sib_first.sample_index == 1
    run(sched, runner)
    assert all(r.output_token_ids == reference_continuation(prompt, 4) for r in group)
    assert_no_leaks(sched)


def test_stop_conditions() -> None:
    prompt = [4, 5, 6]
    ref = reference_continuation(prompt, 10)
    sched, runner = make(eos=(ref[2],))
    add(sched, "eos", prompt, max_tokens=10, ignore_eos=False)
    add(sched, "ignore", prompt, max_tokens=10, ignore_eos=True)
    add(sched, "stop_id", prompt, max_tokens=10, ignore_eos=True, stop_token_ids=(ref[4],))
    reqs = {r.req_id: r for r in sched.waiting}
    out = run(sched, runner)
    assert out["eos"] == ref[:3] and reqs["eos"].status is RequestStatus.FINISHED_STOPPED
    assert out["ignore"] == ref and reqs["ignore"].status is RequestStatus.FINISHED_LENGTH
    assert out["stop_id"] == ref[:5] and reqs["stop_id"].stop_reason == ref[4]


def test_requests_that_can_never_fit_are_rejected_up_front() -> None:
    sched, _ = make(num_blocks=4, max_model_len=100)  # 16 KV slots
    with pytest.raises(RequestRejected, match="KV cache capacity is 17"):
        add(sched, "a", list(range(10)), max_tokens=8)
    sched2, _ = make(num_blocks=64, max_model_len=20)
    with pytest.raises(RequestRejected, match="maximum context length is 20 tokens"):
        add(sched2, "b", list(range(15)), max_tokens=6)
    with pytest.raises(RequestRejected, match="empty"):
        add(sched2, "c", [], max_tokens=1)
    assert add(sched2, "d", list(range(15)), max_tokens=None)[0].max_tokens == 5
    assert add(sched, "e", list(range(10)), max_tokens=7)[0].max_tokens == 7  # exactly fits


def test_abort_frees_blocks_at_once_and_tells_the_runner() -> None:
    sched, runner = make(max_num_batched_tokens=8)
    add(sched, "run", list(range(12)), max_tokens=50)
    add(sched, "wait", list(range(5)), max_tokens=50)
    add(sched, "grp", list(range(9)), max_tokens=50, n=2)
    step(sched, runner)
    assert sched.kv.num_free_blocks() < sched.kv.num_blocks
    aborted = sched.abort(["run", "wait", "grp#0", "grp#1", "unknown"])
    assert {r.req_id for r in aborted} == {"run", "wait", "grp#0", "grp#1"}
    assert all(r.status is RequestStatus.FINISHED_ABORTED for r in aborted)
    assert_no_leaks(sched)
    batch = sched.schedule()
    assert set(batch.finished_req_ids) == {"run", "wait", "grp#0", "grp#1"}


@pytest.mark.parametrize("runner_cuts", [True, False])
def test_verified_drafts_advance_and_rejected_ones_roll_back(runner_cuts: bool) -> None:
    prompt = [2, 7, 1, 8]
    ref = reference_continuation(prompt, 12)
    sched, runner = make()
    runner.cut_at_rejection = runner_cuts
    req = add(sched, "s", prompt, max_tokens=12)[0]
    step(sched, runner)  # prefill, first token
    req.spec_token_ids = [ref[1], ref[2], 99 if ref[3] != 99 else 98]  # two right, one wrong
    batch = sched.schedule()
    assert batch.seqs[0].token_ids == [ref[0], ref[1], ref[2], req.spec_token_ids[2]]
    assert batch.seqs[0].num_logits == 4
    sched.update(batch, runner.execute(batch))
    assert req.output_token_ids == ref[:4]  # 2 accepted drafts + the model's correction
    assert req.num_computed_tokens == len(prompt) + 3  # the wrong draft's slot is rolled back
    assert run(sched, runner)["s"] == ref[4:]
    assert_no_leaks(sched)


def test_drafts_are_dropped_before_anyone_is_preempted_for_their_slots() -> None:
    sched, runner = make(num_blocks=2)
    a = add(sched, "a", [1, 2, 3], max_tokens=4)[0]
    add(sched, "b", [4, 5, 6], max_tokens=4)
    step(sched, runner)  # both prefilled, one block each, pool full
    a.spec_token_ids = [reference_continuation([1, 2, 3], 2)[1]]  # would need a third block
    batch = sched.schedule()
    assert [len(s.token_ids) for s in batch.seqs] == [1, 1] and sched.num_preemptions == 0
    sched.update(batch, runner.execute(batch))
    run(sched, runner)
    assert a.output_token_ids == reference_continuation([1, 2, 3], 4)
    assert_no_leaks(sched)


def test_a_higher_priority_arrival_preempts_a_lower_priority_running_request() -> None:
    sched, runner = make(max_num_seqs=1, policy="priority")
    low = add(sched, "low", [1, 2, 3], max_tokens=6, priority=3, arrival=1.0)[0]
    step(sched, runner)
    step(sched, runner)
    high = add(sched, "high", [7, 8, 9], max_tokens=3, priority=0, arrival=2.0)[0]
    batch = sched.schedule()
    assert [s.req_id for s in batch.seqs] == ["high"] and low.num_preemptions == 1
    sched.update(batch, runner.execute(batch))
    same = add(sched, "same", [4, 4], max_tokens=2, priority=0, arrival=3.0)[0]  # ties wait their turn
    step(sched, runner)
    assert same.num_computed_tokens == 0 and high.num_preemptions == 0
    run(sched, runner)
    assert low.output_token_ids == reference_continuation([1, 2, 3], 6)
    assert high.output_token_ids == reference_continuation([7, 8, 9], 3)
    assert_no_leaks(sched)
