"""ModelPool (models on demand): the bookkeeping of loads, pins and unloads, driven through a real Router
with fake backends (tests/unit/model_pool_fakes.py). Time is a fake clock where the pool reads it (LRU
order, idle time); waits that the pool bounds by asyncio (waiting for room) use small real timeouts.
Failed and timed-out loads: test_model_pool_failures.py."""

from __future__ import annotations

import asyncio

from serve.backends.base import Delta, GenerateRequest
from serve.config import OnDemandConfig
from serve.router.replica import Replica
from serve.sampling_params import SamplingParams
from tests.unit.model_pool_fakes import (
    make_pool,
    run,
    settle,
    states,
    use,
)


def test_nothing_loaded_until_first_request_then_stays_loaded() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a")
        assert states(pool) == {"a": "unloaded"} and b["a"].starts == 0
        await use(pool, "a")
        assert states(pool) == {"a": "loaded"} and pool.slots["a"].pinned == 0
        await use(pool, "a")
        assert b["a"].starts == 1 and pool.slots["a"].loads == 1  # warm: no second load
        assert pool.router.groups["a"].replicas[0].healthy  # started replicas were probed up

    run(main)


def test_concurrent_first_requests_share_one_load() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a")
        b["a"].gate = asyncio.Event()
        group = pool.router.groups["a"]
        waiters = [asyncio.create_task(pool.acquire(group)) for _ in range(3)]
        await settle()
        assert states(pool) == {"a": "loading"} and b["a"].starts == 1
        assert pool.slots["a"].pinned == 3  # pinned from admission, before the model is there
        b["a"].gate.set()
        await asyncio.gather(*waiters)
        assert b["a"].starts == 1 and pool.slots["a"].loads == 1 and states(pool) == {"a": "loaded"}

    run(main)


def test_least_recently_used_idle_model_is_unloaded_at_models_max() -> None:
    async def main() -> None:
        pool, b, clock = make_pool("a", "b", "c", max_loaded=2)
        await use(pool, "a", clock, at=1.0)
        await use(pool, "b", clock, at=2.0)
        await use(pool, "a", clock, at=3.0)  # a is now the more recently used
        await use(pool, "c", clock, at=4.0)
        assert states(pool) == {"a": "loaded", "b": "unloaded", "c": "loaded"}
        assert b["b"].stops == 1 and b["a"].stops == 0
        assert not pool.router.groups["b"].replicas[0].healthy  # an unloaded model is not routable
        await use(pool, "b", clock, at=5.0)  # now a (3.0) is the least recently used
        assert states(pool) == {"a": "unloaded", "b": "loaded", "c": "loaded"}
        assert b["b"].starts == 2 and pool.slots["b"].loads == 2

    run(main)


def test_pinned_model_is_never_unloaded_a_load_waits_for_room() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", max_loaded=1)
        ga, gb = pool.router.groups["a"], pool.router.groups["b"]
        await pool.acquire(ga)  # a request to a is running
        waiting = asyncio.create_task(pool.acquire(gb))
        await settle()
        assert states(pool) == {"a": "loaded", "b": "loading"} and b["b"].starts == 0
        await pool.unload("a")  # neither an explicit unload ...
        pool.config = OnDemandConfig(1, idle_unload_s=0.01)
        idle = asyncio.create_task(pool.idle_loop())  # ... nor the idle loop touches a pinned model
        await asyncio.sleep(0.05)
        idle.cancel()
        assert states(pool)["a"] == "loaded" and b["a"].stops == 0 and not waiting.done()
        pool.release(ga)  # the request ends: now a may go, and b loads in its place
        await waiting
        assert states(pool) == {"a": "unloaded", "b": "loaded"} and b["a"].events == ["start", "stop"]

    run(main)


def test_pinned_for_the_whole_stream_through_the_router() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", max_loaded=1)
        router = pool.router

        async def make(_: Replica) -> GenerateRequest:
            return GenerateRequest("r", SamplingParams(max_tokens=3))

        stream = router.stream(router.groups["a"], make)
        assert isinstance(await stream.__anext__(), Delta)  # mid-stream: a is pinned
        waiting = asyncio.create_task(pool.acquire(router.groups["b"]))
        await settle()
        assert states(pool) == {"a": "loaded", "b": "loading"} and pool.slots["a"].pinned == 1
        assert [e.text async for e in stream if isinstance(e, Delta)] == ["a1", "a2"]  # not cut short
        await waiting  # the stream ended, releasing a: b took its place
        assert states(pool) == {"a": "unloaded", "b": "loaded"} and pool.slots["a"].pinned == 0

    run(main)


def test_several_models_waiting_for_room_are_each_served_in_turn() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", "c", max_loaded=1, load_timeout_s=2.0)
        await pool.acquire(pool.router.groups["a"])
        waiting = {n: asyncio.create_task(pool.acquire(pool.router.groups[n])) for n in ("b", "c")}
        await settle()
        pool.release(pool.router.groups["a"])
        done, _ = await asyncio.wait(waiting.values(), return_when=asyncio.FIRST_COMPLETED)
        first = next(n for n, t in waiting.items() if t in done)
        second = "c" if first == "b" else "b"
        await done.pop()
        assert states(pool) == {"a": "unloaded", first: "loaded", second: "loading"}
        assert b[second].starts == 0  # never two resident at once
        pool.release(pool.router.groups[first])
        await waiting[second]
        assert states(pool) == {"a": "unloaded", first: "unloaded", second: "loaded"}

    run(main)


def test_a_model_still_stopping_holds_its_room() -> None:
    async def main() -> None:
        pool, b, clock = make_pool("a", "b", max_loaded=1)
        await use(pool, "a")
        b["a"].stop_gate = asyncio.Event()
        unloading = asyncio.create_task(pool.unload("a"))  # as the idle loop does
        await settle()
        assert states(pool)["a"] == "unloaded" and b["a"].stops == 1  # stop() under way
        loading = asyncio.create_task(pool.acquire(pool.router.groups["b"]))
        await settle()
        assert b["b"].starts == 0  # a's memory is not free yet
        b["a"].stop_gate.set()
        await asyncio.gather(unloading, loading)
        assert states(pool) == {"a": "unloaded", "b": "loaded"}

    run(main)


def test_request_during_unload_reloads_after_the_stop() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a")
        await use(pool, "a")
        b["a"].stop_gate = asyncio.Event()
        unloading = asyncio.create_task(pool.unload("a"))
        await settle()
        again = asyncio.create_task(pool.acquire(pool.router.groups["a"]))
        await settle()
        assert b["a"].starts == 1  # the reload waits for the stop to finish
        b["a"].stop_gate.set()
        await asyncio.gather(unloading, again)
        assert b["a"].events == ["start", "stop", "start"] and states(pool) == {"a": "loaded"}

    run(main)


def test_idle_loop_unloads_only_models_idle_long_enough() -> None:
    async def main() -> None:
        pool, b, clock = make_pool("a", "b", "c", idle_unload_s=0.02)  # the loop wakes every 5 ms
        await use(pool, "a", clock, at=0.0)
        await use(pool, "b", clock, at=9.0)
        await pool.acquire(pool.router.groups["c"])  # c is busy
        loop = asyncio.create_task(pool.idle_loop())
        clock.now = 9.01  # a idle 9.01 s (> 0.02), b idle 0.01 s
        await asyncio.sleep(0.05)
        assert states(pool) == {"a": "unloaded", "b": "loaded", "c": "loaded"}
        clock.now = 100.0
        await asyncio.sleep(0.05)
        assert states(pool) == {"a": "unloaded", "b": "unloaded", "c": "loaded"}  # pinned c stays
        pool.release(pool.router.groups["c"])  # idle time counts from the release
        await asyncio.sleep(0.05)
        assert states(pool)["c"] == "loaded"
        clock.now = 101.0
        await asyncio.sleep(0.05)
        assert states(pool)["c"] == "unloaded"
        loop.cancel()
        await use(pool, "a")  # the next request loads it again
        assert states(pool)["a"] == "loaded" and pool.slots["a"].loads == 2

    run(main)


def test_state_info_and_metrics() -> None:
    async def main() -> None:
        pool, _, clock = make_pool("a", "b")
        clock.now = 10.0
        await pool.acquire(pool.router.groups["a"])
        info = pool.model_info("a")
        assert info["state"] == "loaded" and info["requests"] == 1 and info["loads"] == 1
        assert info["idle_s"] == 0.0 and pool.model_info("b")["state"] == "unloaded"
        pool.release(pool.router.groups["a"])
        clock.now = 12.5
        assert pool.model_info("a")["idle_s"] == 2.5
        samples = {(s.name, tuple(s.labels.values())): s.value for m in pool.collect() for s in m.samples}
        assert samples[("sluice:model_state", ("a", "loaded"))] == 1.0
        assert samples[("sluice:model_state", ("b", "unloaded"))] == 1.0
        assert samples[("sluice:model_loads_total", ("a",))] == 1.0

    run(main)
