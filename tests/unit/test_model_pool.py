"""ModelPool (models on demand): the bookkeeping of loads, pins and unloads, driven through a real Router
with fake backends. Time is a fake clock where the pool reads it (LRU order, idle time); waits that the
pool bounds by asyncio (load timeout, waiting for room) use small real timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from serve.backends.base import BackendUnavailable, Delta, GenerateRequest, ModelInfo, StreamEvent, Usage
from serve.config import ModelConfig, OnDemandConfig, ReplicaSpec
from serve.router.on_demand import ModelPool
from serve.router.policy import make_policy
from serve.router.replica import Replica
from serve.router.router import ModelGroup, Router
from serve.sampling_params import SamplingParams


class FakeBackend:
    """Fake backend: this test is about the pool's bookkeeping, not about models.

    start() waits on `gate` when one is set (a slow or hung load) and raises while `fail_starts` > 0
    (counting down); stop() waits on `stop_gate` when set. `starts`/`stops` count calls; `events` logs
    "start"/"stop" in the order they completed."""

    name = "fake"

    def __init__(self, label: str) -> None:
        self.label = label
        self.gate: asyncio.Event | None = None
        self.stop_gate: asyncio.Event | None = None
        self.fail_starts = 0
        self.starts = self.stops = 0
        self.running = False
        self.events: list[str] = []

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(max_model_len=128)

    async def start(self) -> None:
        self.starts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError(f"{self.label}: weights unreadable")
        self.running = True
        self.events.append("start")

    async def stop(self) -> None:
        self.stops += 1
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.running = False
        self.events.append("stop")

    async def check_health(self) -> bool:
        return self.running

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[StreamEvent]:
        for i in range(3):
            yield Delta(0, f"{self.label}{i}")
        yield Usage(prompt_tokens=1, completion_tokens=3)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_pool(*labels: str, max_loaded: int = 0, idle_unload_s: float = 0.0, load_timeout_s: float = 5.0,
              ) -> tuple[ModelPool, dict[str, FakeBackend], Clock]:
    backends = {label: FakeBackend(label) for label in labels}
    groups = [ModelGroup(ModelConfig(name=label, replicas=(ReplicaSpec(),)),
                         [Replica(label, f"{label}/0:fake", b)],  # type: ignore[arg-type]
                         make_policy("round-robin")) for label, b in backends.items()]
    router = Router(groups)
    clock = Clock()
    pool = ModelPool(router, OnDemandConfig(max_loaded, idle_unload_s, load_timeout_s), clock=clock)
    router.on_demand = pool
    return pool, backends, clock


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 10))  # a pool bug that hangs fails the test, not the run


async def settle() -> None:
    """Let every ready task run until it blocks (loads here never touch real I/O)."""
    for _ in range(20):
        await asyncio.sleep(0)


def states(pool: ModelPool) -> dict[str, str]:
    return {name: s.state.value for name, s in pool.slots.items()}


async def use(pool: ModelPool, name: str, clock: Clock | None = None, at: float | None = None) -> None:
    """One whole request to `name`: acquire, then release (at clock time `at`)."""
    group = pool.router.groups[name]
    await pool.acquire(group)
    if clock is not None and at is not None:
        clock.now = at
    pool.release(group)


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


def test_waiting_for_room_gives_up_at_the_load_timeout() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", max_loaded=1, load_timeout_s=0.1)
        await pool.acquire(pool.router.groups["a"])
        with pytest.raises(BackendUnavailable, match="did not load within 0.1 s|waiting for room"):
            await pool.acquire(pool.router.groups["b"])
        assert pool.slots["b"].pinned == 0
        await asyncio.sleep(0.1)  # the load itself gives up at its deadline too: no place kept waiting
        assert states(pool) == {"a": "loaded", "b": "unloaded"} and not pool.slots["b"].room
        assert b["b"].starts == 0 and b["a"].stops == 0

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


def test_load_failure_is_a_503_and_the_next_request_retries() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", max_loaded=1)
        b["a"].fail_starts = 1
        with pytest.raises(BackendUnavailable, match="model 'a' could be started"):
            await pool.acquire(pool.router.groups["a"])
        assert states(pool)["a"] == "unloaded" and pool.slots["a"].pinned == 0 and pool.slots["a"].loads == 0
        assert b["a"].stops == 1  # whatever it half-loaded is released
        await use(pool, "b")  # the failed load did not keep the only place
        await use(pool, "a")
        assert states(pool) == {"a": "loaded", "b": "unloaded"} and b["a"].starts == 2

    run(main)


def test_load_failure_reaches_every_waiter_of_the_shared_load() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a")
        b["a"].gate, b["a"].fail_starts = asyncio.Event(), 1
        waiters = [asyncio.create_task(pool.acquire(pool.router.groups["a"])) for _ in range(2)]
        await settle()
        b["a"].gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, BackendUnavailable) for r in results) and b["a"].starts == 1
        assert pool.slots["a"].pinned == 0 and states(pool) == {"a": "unloaded"}

    run(main)


def test_load_timeout_answers_503_and_the_shared_load_carries_on() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", load_timeout_s=0.05)
        b["a"].gate = asyncio.Event()
        with pytest.raises(BackendUnavailable, match="did not load within 0.05 s"):
            await pool.acquire(pool.router.groups["a"])
        assert pool.slots["a"].pinned == 0 and states(pool) == {"a": "loading"}
        # The load is not cancelled (a backend's start runs in a thread that cancelling cannot stop);
        # the next request joins it instead of starting a second one.
        again = asyncio.create_task(pool.acquire(pool.router.groups["a"]))
        await settle()
        b["a"].gate.set()
        await again
        assert b["a"].starts == 1 and pool.slots["a"].loads == 1 and states(pool) == {"a": "loaded"}

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


class TokenizingBackend(FakeBackend):
    """A fake with a toy tokenizer (one id per character) that only works while started."""

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        if not self.running:
            raise BackendUnavailable(f"{self.label} is not running")
        return [ord(c) for c in text]

    async def detokenize(self, token_ids: list[int]) -> str:
        if not self.running:
            raise BackendUnavailable(f"{self.label} is not running")
        return "".join(map(chr, token_ids))

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(max_model_len=128, vocab_size=256)


def test_tokenize_and_detokenize_load_an_unloaded_model() -> None:
    from fastapi.testclient import TestClient

    from serve.api.app import create_app
    from serve.config import ServerConfig

    backends = {n: TokenizingBackend(n) for n in ("a", "b")}
    configs = tuple(ModelConfig(name=n, replicas=(ReplicaSpec(),)) for n in backends)
    router = Router.from_replicas(list(configs), {n: [Replica(n, f"{n}/0:fake", b)]  # type: ignore[arg-type]
                                                  for n, b in backends.items()})
    config = ServerConfig(models=configs, ui=False, health_interval_s=3600, on_demand=OnDemandConfig(max_loaded=1))
    with TestClient(create_app(config, router)) as client:
        pool = router.on_demand
        assert pool is not None and states(pool) == {"a": "unloaded", "b": "unloaded"}
        r = client.post("/tokenize", json={"model": "a", "prompt": "hi"})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == [104, 105] and states(pool) == {"a": "loaded", "b": "unloaded"}
        r = client.post("/detokenize", json={"model": "b", "tokens": [111, 107]})
        assert r.status_code == 200 and r.json()["prompt"] == "ok", r.text
        assert states(pool) == {"a": "unloaded", "b": "loaded"}  # --models-max 1: a made way
        assert pool.slots["a"].pinned == pool.slots["b"].pinned == 0  # released after the answer
        assert client.post("/tokenize", json={"model": "a"}).status_code == 400  # checked before any load
        assert states(pool)["a"] == "unloaded"
        backends["a"].fail_starts = 1
        r = client.post("/tokenize", json={"model": "a", "prompt": "x"})
        assert r.status_code == 503 and "model 'a' could be started" in r.text
        assert pool.slots["a"].pinned == 0
