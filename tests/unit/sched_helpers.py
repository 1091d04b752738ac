"""Helpers for scheduler tests: build a scheduler over the FAKE paged runner and run it to the end."""

from __future__ import annotations

from serve.engine.config import SchedulerConfig
from serve.engine.request import Request
from serve.engine.scheduler import Scheduler
from serve.sampling_params import SamplingParams
from tests.unit.fake_runner import FakePagedRunner


def make(num_blocks: int = 64, block_size: int = 4, max_model_len: int = 512, caching: bool = True,
         eos: tuple[int, ...] = (), **cfg: object) -> tuple[Scheduler, FakePagedRunner]:
    runner = FakePagedRunner(num_blocks, block_size, max_model_len, eos_token_ids=eos)
    sched = Scheduler(SchedulerConfig(**cfg), num_blocks=num_blocks, block_size=block_size,  # type: ignore[arg-type]
                      max_model_len=max_model_len, enable_prefix_caching=caching, eos_token_ids=eos)
    return sched, runner


def add(sched: Scheduler, rid: str, prompt: list[int], max_tokens: int | None = 5, n: int = 1,
        priority: int = 0, arrival: float | None = None, **kw: object) -> list[Request]:
    kw.setdefault("ignore_eos", True)
    params = SamplingParams(max_tokens=max_tokens, n=n, **kw)  # type: ignore[arg-type]
    limit = sched.resolve_max_tokens(len(prompt), params)
    ids = [rid] if n == 1 else [f"{rid}#{i}" for i in range(n)]
    group = [Request(r, prompt, params, limit, group_id=rid, sample_index=i, priority=priority,
                     arrival_time=arrival) for i, r in enumerate(ids)]
    sched.add_requests(group)
    return group


def step(sched: Scheduler, runner: FakePagedRunner) -> list[tuple[Request, list[int]]]:
    batch = sched.schedule()
    if not batch.seqs:
        sched.requeue_finished_ids(batch.finished_req_ids)
        return []
    return sched.update(batch, runner.execute(batch))


def run(sched: Scheduler, runner: FakePagedRunner, max_steps: int = 10_000) -> dict[str, list[int]]:
    """Step until nothing is left; returns each request's output tokens."""
    outputs: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return outputs
        for req, new in step(sched, runner):
            outputs.setdefault(req.req_id, []).extend(new)
    raise AssertionError("scheduler did not finish: deadlock or livelock")


def assert_no_leaks(sched: Scheduler) -> None:
    pool = sched.kv.pool
    assert pool.num_free_blocks == pool.num_blocks, "blocks still held after every request ended"
    assert all(b.ref_cnt == 0 for b in pool.blocks)
    assert sched.kv.num_tracked_requests() == 0
    assert not sched.requests and not sched.running and not sched.waiting and not sched.pending_siblings
