"""Router: admission, retry before the first event, propagation after it, health, start-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from serve.backends.base import (
    BackendError,
    BackendUnavailable,
    Delta,
    GenerateRequest,
    ModelInfo,
    StreamEvent,
    Usage,
)
from serve.config import ModelConfig, ReplicaSpec
from serve.router.replica import Replica
from serve.router.router import ModelGroup, NoHealthyReplica, Overloaded, Router, UnknownModel
from serve.sampling_params import SamplingParams


class FakeBackend:
    """Fake backend: this test is about routing, not generation.

    Streams `tokens` Deltas whose text is `<label><i>` (so the client can tell replicas apart), then a
    Usage. `fail_at=i` raises BackendUnavailable before event i; `healthy` drives check_health (an
    exception instance makes the probe raise); `start_error` makes start() fail.
    """

    name = "fake"

    def __init__(self, label: str, tokens: int = 3, fail_at: int | None = None,
                 healthy: bool | Exception = True, start_error: Exception | None = None) -> None:
        self.label, self.tokens, self.fail_at = label, tokens, fail_at
        self.healthy, self.start_error = healthy, start_error
        self.calls: list[str] = []
        self.closed: list[str] = []

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(max_model_len=128)

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def stop(self) -> None:
        pass

    async def check_health(self) -> bool:
        if isinstance(self.healthy, Exception):
            raise self.healthy
        return self.healthy

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        self.calls.append(request.request_id)
        return self._gen(request.request_id)

    async def _gen(self, rid: str) -> AsyncIterator[StreamEvent]:
        try:
            for i in range(self.tokens):
                if self.fail_at == i:
                    raise BackendUnavailable(f"{self.label} crashed")
                yield Delta(0, f"{self.label}{i}")
            yield Usage(prompt_tokens=1, completion_tokens=self.tokens)
        finally:
            self.closed.append(rid)


def make_router(*backends: FakeBackend, policy: str = "round-robin", max_outstanding: int = 16,
                healthy: bool = True) -> tuple[Router, ModelGroup]:
    cfg = ModelConfig(name="m", replicas=tuple(ReplicaSpec() for _ in backends), aliases=("alias",),
                      policy=policy, max_outstanding=max_outstanding)
    reps = [Replica("m", f"m/{i}:{b.label}", b, healthy=healthy) for i, b in enumerate(backends)]  # type: ignore[arg-type]
    router = Router.from_replicas([cfg], {"m": reps})
    return router, router.resolve("m")


async def make_request(replica: Replica) -> GenerateRequest:
    return GenerateRequest("req-1", SamplingParams(max_tokens=4))


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [ev async for ev in stream]


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Delta)]


def test_happy_path_streams_all_events_and_releases_counters() -> None:
    a = FakeBackend("a")
    router, group = make_router(a)
    events = asyncio.run(collect(router.stream(group, make_request)))
    assert texts(events) == ["a0", "a1", "a2"] and isinstance(events[-1], Usage)
    assert group.admitted == 0 and group.replicas[0].outstanding == 0
    assert a.closed == ["req-1"]


def test_resolve_by_alias_and_unknown_model_lists_served() -> None:
    router, group = make_router(FakeBackend("a"))
    assert router.resolve("alias") is group
    with pytest.raises(UnknownModel, match="Served models: m, alias"):
        router.resolve("gpt-5")


def test_admission_limit_raises_overloaded_and_recovers() -> None:
    async def main() -> None:
        router, group = make_router(FakeBackend("a"), max_outstanding=1)
        first = router.stream(group, make_request)
        assert isinstance(await first.__anext__(), Delta)  # in flight: holds the only slot
        assert group.admitted == 1 and group.replicas[0].outstanding == 1
        with pytest.raises(Overloaded, match="limit 1"):
            await router.stream(group, make_request).__anext__()
        await first.aclose()  # the client goes away: slot and replica counter are released
        assert group.admitted == 0 and group.replicas[0].outstanding == 0
        assert texts(await collect(router.stream(group, make_request))) == ["a0", "a1", "a2"]

    asyncio.run(main())


def test_failure_before_first_event_retries_on_another_replica() -> None:
    a, b = FakeBackend("a", fail_at=0), FakeBackend("b")
    router, group = make_router(a, b)  # round-robin: a is tried first
    events = asyncio.run(collect(router.stream(group, make_request)))
    assert texts(events) == ["b0", "b1", "b2"]  # the client sees only the second replica's output
    ra, rb = group.replicas
    # one fault is counted, not fatal: the breaker opens only after several in a row
    assert ra.routable() and ra.consecutive_failures == 1 and rb.routable()
    assert a.calls == ["req-1"] and b.calls == ["req-1"] and group.retries == 1
    assert ra.outstanding == rb.outstanding == group.admitted == 0


def test_request_factory_failing_on_a_replica_also_retries() -> None:
    async def flaky(replica: Replica) -> GenerateRequest:
        if replica.replica_id.endswith(":a"):
            raise BackendUnavailable("tokenizer endpoint refused the connection")
        return await make_request(replica)

    a, b = FakeBackend("a"), FakeBackend("b")
    router, group = make_router(a, b)
    assert texts(asyncio.run(collect(router.stream(group, flaky)))) == ["b0", "b1", "b2"]
    assert a.calls == [] and group.replicas[0].consecutive_failures == 1


def test_failure_after_first_event_propagates_without_retry() -> None:
    async def main() -> list[StreamEvent]:
        got: list[StreamEvent] = []
        with pytest.raises(BackendUnavailable, match="a crashed"):
            async for ev in router.stream(group, make_request):
                got.append(ev)
        return got

    a, b = FakeBackend("a", fail_at=1), FakeBackend("b")
    router, group = make_router(a, b)
    assert texts(asyncio.run(main())) == ["a0"]
    assert b.calls == [] and group.retries == 0
    assert group.admitted == 0 and group.replicas[0].outstanding == 0


def test_non_retryable_backend_error_propagates_immediately() -> None:
    class Rejecting(FakeBackend):
        """Fake backend: this test is about routing, not generation. Rejects every request with a 400."""

        def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
            raise BackendError("bad request", status=400)

    a, b = Rejecting("a"), FakeBackend("b")
    router, group = make_router(a, b)
    with pytest.raises(BackendError, match="bad request"):
        asyncio.run(collect(router.stream(group, make_request)))
    assert b.calls == [] and group.replicas[0].healthy  # a client error says nothing about health


def test_all_replicas_failing_ends_in_no_healthy_replica() -> None:
    a, b = FakeBackend("a", fail_at=0), FakeBackend("b", fail_at=0)
    router, group = make_router(a, b)
    with pytest.raises(NoHealthyReplica):
        asyncio.run(collect(router.stream(group, make_request)))
    assert a.calls == ["req-1"] and b.calls == ["req-1"]  # each tried once, no loop
    assert group.admitted == 0


def test_no_healthy_replica_when_all_are_down() -> None:
    a = FakeBackend("a")
    router, group = make_router(a, FakeBackend("b"), healthy=False)
    with pytest.raises(NoHealthyReplica, match="'m'"):
        asyncio.run(collect(router.stream(group, make_request)))
    assert a.calls == [] and group.admitted == 0


def test_down_replica_is_skipped() -> None:
    a, b = FakeBackend("a"), FakeBackend("b")
    router, group = make_router(a, b)
    group.replicas[0].mark_down()
    for _ in range(3):
        asyncio.run(collect(router.stream(group, make_request)))
    assert a.calls == [] and len(b.calls) == 3


def test_health_check_marks_down_and_back_up() -> None:
    a, b = FakeBackend("a"), FakeBackend("b")
    router, group = make_router(a, b, healthy=False)
    ra, rb = group.replicas
    asyncio.run(router.check_health())
    assert ra.healthy and rb.healthy
    a.healthy, b.healthy = False, RuntimeError("probe failed")
    asyncio.run(router.check_health())
    assert not ra.healthy and not rb.healthy
    a.healthy = True
    asyncio.run(router.check_health())
    assert ra.healthy and not rb.healthy


def test_start_marks_failed_replica_down_and_serves_with_the_rest() -> None:
    a, b = FakeBackend("a", start_error=OSError("model file missing")), FakeBackend("b")
    router, group = make_router(a, b, healthy=False)
    asyncio.run(router.start())
    assert [r.healthy for r in group.replicas] == [False, True]


def test_start_raises_when_every_replica_fails() -> None:
    a = FakeBackend("a", start_error=OSError("no"))
    b = FakeBackend("b", start_error=RuntimeError("no"))
    router, _ = make_router(a, b, healthy=False)
    with pytest.raises(RuntimeError, match="no replica could be started"):
        asyncio.run(router.start())
