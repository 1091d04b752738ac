"""Router + circuit breaker: backpressure is retried elsewhere and never counted; faults open a
replica's circuit only after several in a row; after the cooldown exactly one trial goes through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from serve.api.state import to_api_error
from serve.backends.base import (
    BackendBusy,
    BackendTimeout,
    BackendUnavailable,
    Delta,
    StreamEvent,
)
from serve.config import BreakerConfig
from serve.router.breaker import BreakerState, CircuitBreaker
from serve.router.router import ModelGroup, NoHealthyReplica, Router
from tests.unit.test_router import FakeBackend, collect, make_request, make_router, texts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted(FakeBackend):
    """Fake backend: this test is about routing, not generation. Each call pops the next outcome:
    "ok", or a callable making the exception to raise before the first event."""

    def __init__(self, label: str, script: list[str | Callable[[], Exception]]) -> None:
        super().__init__(label)
        self.script = script

    async def _gen(self, rid: str) -> AsyncIterator[StreamEvent]:
        step = self.script.pop(0) if self.script else "ok"
        if step != "ok":
            assert callable(step)
            raise step()
        async for ev in super()._gen(rid):
            yield ev


def busy() -> Exception:
    return BackendBusy("upstream answered 429: slow down", retry_after="7")


def fault() -> Exception:
    return BackendUnavailable("upstream answered 500")


def with_breakers(router: Router, group: ModelGroup, clock: Clock, failures: int = 3,
                  cooldown_s: float = 5.0) -> None:
    for r in group.replicas:
        r.breaker = CircuitBreaker(BreakerConfig(failures=failures, cooldown_s=cooldown_s), clock)


def run(router: Router, group: ModelGroup) -> list[str]:
    return texts(asyncio.run(collect(router.stream(group, make_request))))


def test_busy_replica_is_retried_elsewhere_and_not_counted() -> None:
    a, b = Scripted("a", [busy] * 5), FakeBackend("b")
    router, group = make_router(a, b)
    for _ in range(4):
        assert run(router, group)[0] == "b0"
    ra = group.replicas[0]
    assert len(a.calls) == 4 and group.retries == 4  # every request tried `a` first (round-robin)
    assert ra.routable() and ra.consecutive_failures == 0 and ra.breaker.state is BreakerState.CLOSED


def test_every_replica_busy_gives_429_with_the_upstream_retry_after() -> None:
    router, group = make_router(Scripted("a", [busy]), Scripted("b", [busy]))
    with pytest.raises(BackendBusy) as info:
        run(router, group)
    err = to_api_error(info.value)
    assert err.status == 429 and err.kind == "rate_limit_error" and err.headers == {"Retry-After": "7"}
    assert all(r.routable() for r in group.replicas)


def test_busy_and_fault_together_still_say_retry_later() -> None:
    router, group = make_router(Scripted("a", [busy]), Scripted("b", [fault]))
    with pytest.raises(BackendBusy):
        run(router, group)


def test_three_faults_in_a_row_open_the_circuit_then_trial_closes_it() -> None:
    clock = Clock()
    a, b = Scripted("a", [fault] * 3), FakeBackend("b")
    router, group = make_router(a, b)
    with_breakers(router, group, clock)
    ra = group.replicas[0]
    for _ in range(6):  # round-robin: `a` is tried first on every other request
        assert run(router, group)[0] == "b0"
    assert ra.breaker.state is BreakerState.OPEN and not ra.up and ra.healthy
    calls = len(a.calls)
    for _ in range(4):
        run(router, group)
    assert len(a.calls) == calls  # open: no traffic at all
    clock.now += 5.0
    assert ra.up and ra.breaker.state is BreakerState.HALF_OPEN
    outputs = [run(router, group)[0] for _ in range(2)]
    assert "a0" in outputs and ra.breaker.state is BreakerState.CLOSED


def test_failed_trial_reopens() -> None:
    clock = Clock()
    router, group = make_router(Scripted("a", [fault] * 4), FakeBackend("b"), policy="least-outstanding")
    with_breakers(router, group, clock, failures=1)
    run(router, group)
    ra = group.replicas[0]
    assert ra.breaker.state is BreakerState.OPEN
    clock.now += 5.0
    for _ in range(2):
        run(router, group)
    assert ra.breaker.state is BreakerState.OPEN and ra.breaker.retry_in() == 5.0


def test_half_open_lets_one_concurrent_trial_through() -> None:
    async def main() -> None:
        clock = Clock()
        router, group = make_router(FakeBackend("a"), FakeBackend("b"), policy="round-robin")
        with_breakers(router, group, clock, failures=1)
        ra = group.replicas[0]
        ra.breaker.failure()
        clock.now += 5.0
        trial = router.stream(group, make_request)
        first = await trial.__anext__()
        assert isinstance(first, Delta) and first.text == "a0"  # the trial is in flight on `a`
        others = [texts(await collect(router.stream(group, make_request)))[0] for _ in range(3)]
        assert others == ["b0"] * 3
        await trial.aclose()  # the client left: no verdict, the slot is free again
        assert ra.breaker.available() and ra.breaker.state is BreakerState.HALF_OPEN

    asyncio.run(main())


def test_mid_stream_fault_is_neither_retried_nor_counted() -> None:
    router, group = make_router(FakeBackend("a", fail_at=1), FakeBackend("b"))
    with pytest.raises(BackendUnavailable):
        run(router, group)
    assert group.replicas[0].consecutive_failures == 0 and group.retries == 0


def test_replica_seen_down_then_up_by_its_probe_starts_with_a_closed_circuit() -> None:
    clock = Clock()
    a = FakeBackend("a", healthy=False)
    router, group = make_router(a, FakeBackend("b"))
    with_breakers(router, group, clock, failures=1)
    ra = group.replicas[0]
    ra.breaker.failure()  # e.g. a request that raced its restart
    asyncio.run(router.check_health())
    assert not ra.healthy and ra.breaker.state is BreakerState.OPEN
    a.healthy = True
    asyncio.run(router.check_health())  # back up: no cooldown to wait out
    assert ra.routable() and ra.breaker.state is BreakerState.CLOSED


def test_timeouts_everywhere_end_in_504() -> None:
    def hang() -> Exception:
        return BackendTimeout("upstream went silent")

    router, group = make_router(Scripted("a", [hang]), Scripted("b", [hang]))
    with pytest.raises(BackendTimeout) as info:
        run(router, group)
    assert to_api_error(info.value).status == 504


def test_faults_everywhere_end_in_503_naming_the_cause() -> None:
    router, group = make_router(Scripted("a", [fault]), Scripted("b", [fault]))
    with pytest.raises(NoHealthyReplica, match="last error: upstream answered 500"):
        run(router, group)


def test_passing_probe_closes_the_circuit_after_the_cooldown() -> None:
    clock = Clock()
    router, group = make_router(FakeBackend("a"), FakeBackend("b"))
    with_breakers(router, group, clock, failures=1)
    ra = group.replicas[0]
    ra.breaker.failure()
    asyncio.run(router.check_health())
    assert ra.breaker.state is BreakerState.OPEN  # too early: the cooldown is the point
    clock.now += 5.0
    asyncio.run(router.check_health())
    assert ra.breaker.state is BreakerState.CLOSED and ra.routable()
