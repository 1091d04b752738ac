"""Router: model name -> replicas. Admission (bounded, fail fast), policy choice, retry before the
first token on another replica, and health tracking. Talks only to the Backend protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from serve.backends.base import BackendBusy, BackendTimeout, BackendUnavailable, GenerateRequest, StreamEvent
from serve.config import ModelConfig
from serve.router.policy import Policy, make_policy
from serve.router.replica import Replica
from serve.telemetry.genai import routed

if TYPE_CHECKING:
    from serve.router.on_demand import ModelPool

log = logging.getLogger("sluice.router")


class UnknownModel(Exception):
    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(f"The model '{model}' does not exist. Served models: {', '.join(served)}")


class Overloaded(Exception):
    """The model's admission limit is reached: answer 503 with Retry-After."""


class NoHealthyReplica(BackendUnavailable):
    pass


@dataclass
class ModelGroup:
    config: ModelConfig
    replicas: list[Replica]
    policy: Policy
    admitted: int = 0
    retries: int = field(default=0)

    @property
    def name(self) -> str:
        return self.config.name

    def healthy(self, exclude: set[str]) -> list[Replica]:
        """Replicas a request may go to now: probed healthy, breaker letting traffic through."""
        return [r for r in self.replicas if r.routable() and r.replica_id not in exclude]


RequestFactory = Callable[[Replica], Awaitable[GenerateRequest]]


@dataclass
class _Attempt:
    replica: Replica
    trial: bool  # the half-open breaker's one trial request
    started: bool = False  # an event reached the client: no retry any more


def _settle(replica: Replica, trial: bool, verdict: bool | None) -> None:
    if verdict is True:
        replica.breaker.success(trial)
    elif verdict is False:
        before = replica.breaker.state
        replica.breaker.failure(trial)
        if replica.breaker.state is not before:
            log.warning("replica %s: circuit open for %.1fs after %s", replica.replica_id,
                        replica.breaker.config.cooldown_s, "a failed trial" if trial else "repeated failures")
    else:
        replica.breaker.release(trial)


class RouterObserver(Protocol):
    """Told what the router did; the HTTP layer turns it into metrics."""

    def replica_done(self, replica_id: str, seconds: float, ok: bool) -> None: ...

    def retried(self, model: str) -> None: ...


class Router:
    def __init__(self, groups: list[ModelGroup], observer: RouterObserver | None = None) -> None:
        self.observer = observer
        self.on_demand: ModelPool | None = None  # set: models load at first request (on_demand.py)
        self.groups = {g.name: g for g in groups}
        self._names: dict[str, ModelGroup] = {}
        for g in groups:
            for n in (g.name, *g.config.aliases):
                self._names[n] = g

    @classmethod
    def from_replicas(cls, configs: list[ModelConfig], replicas: dict[str, list[Replica]]) -> Router:
        return cls([ModelGroup(c, replicas[c.name], make_policy(c.policy)) for c in configs])

    def served(self) -> list[str]:
        return list(self._names)

    def resolve(self, model: str) -> ModelGroup:
        group = self._names.get(model)
        if group is None:
            raise UnknownModel(model, self.served())
        return group

    def all_replicas(self) -> list[Replica]:
        return [r for g in self.groups.values() for r in g.replicas]

    def pick(self, group: ModelGroup, prefix_key: str, exclude: set[str] | None = None) -> Replica:
        candidates = group.healthy(exclude or set())
        if not candidates:
            raise NoHealthyReplica(f"no healthy replica for model '{group.name}'")
        return group.policy.choose(candidates, prefix_key)

    async def stream(self, group: ModelGroup, make_request: RequestFactory,
                     prefix_key: str = "") -> AsyncIterator[StreamEvent]:
        """Admit, pick a replica, stream its events. A replica failing or busy before its first event
        hands the request to another healthy replica (each is tried at most once); after the first
        event a failure propagates (the client already has partial output). Faults go to the
        replica's circuit breaker; backpressure (BackendBusy) does not."""
        if group.admitted >= group.config.max_outstanding:
            raise Overloaded(f"model '{group.name}' has {group.admitted} requests in flight "
                             f"(limit {group.config.max_outstanding}); retry later")
        group.admitted += 1
        pinned = False
        try:
            if self.on_demand is not None:  # loads the model if needed; pinned: never unloaded under us
                await self.on_demand.acquire(group)
                pinned = True
            tried: set[str] = set()
            last: BackendUnavailable | None = None
            while True:
                replica = self._next(group, prefix_key, tried, last)
                tried.add(replica.replica_id)
                routed(replica.replica_id, replica.backend.name, group.name)
                attempt = _Attempt(replica, replica.breaker.acquire())
                events = self._attempt(attempt, make_request)
                try:
                    async for event in events:
                        yield event
                    return
                except BackendUnavailable as e:
                    if attempt.started:
                        raise
                    # Remember a busy answer over a fault: "retry later" is the truer final word.
                    last = last if isinstance(last, BackendBusy) else e
                    self._retrying(group, replica, e)
                finally:
                    await events.aclose()  # type: ignore[attr-defined] - settles it if the client left
        finally:
            group.admitted -= 1
            if pinned and self.on_demand is not None:
                self.on_demand.release(group)

    @contextlib.asynccontextmanager
    async def pinned(self, group: ModelGroup) -> AsyncIterator[None]:
        """Keep `group`'s model loaded for a request that does not go through `stream` (/tokenize,
        /detokenize): with models on demand it loads the model if needed, as a generation would."""
        if self.on_demand is None:
            yield
            return
        await self.on_demand.acquire(group)
        try:
            yield
        finally:
            self.on_demand.release(group)

    def _next(self, group: ModelGroup, prefix_key: str, tried: set[str],
              last: BackendUnavailable | None) -> Replica:
        """The next replica to try; when none is left, the error the client should see."""
        try:
            return self.pick(group, prefix_key, tried)
        except NoHealthyReplica as e:
            if isinstance(last, (BackendBusy, BackendTimeout)):
                raise last from None  # 429 (with the upstream's Retry-After) or 504
            if last is not None:
                raise NoHealthyReplica(f"{e}; last error: {last}") from last
            raise

    async def _attempt(self, attempt: _Attempt, make_request: RequestFactory) -> AsyncIterator[StreamEvent]:
        """One try on one replica; settles its breaker: success, fault, or no verdict."""
        replica = attempt.replica
        verdict: bool | None = None  # None: client gone, client error or backpressure
        t0 = time.monotonic()
        replica.outstanding += 1
        try:
            request = await make_request(replica)
            agen = replica.backend.generate(request)
            try:
                async for event in agen:
                    attempt.started = True
                    yield event
            finally:
                await agen.aclose()  # type: ignore[attr-defined]
            verdict = True
        except BackendBusy:
            raise
        except BackendUnavailable:
            # Refused, reset, timed out, 5xx before the first token: a fault. A failure mid-stream is
            # not counted: one incident (an engine restart, say) would end many streams at once and
            # count as many faults; the replica's next request or probe tells the truth.
            verdict = None if attempt.started else False
            raise
        finally:
            replica.outstanding -= 1
            _settle(replica, attempt.trial, verdict)
            if self.observer:
                self.observer.replica_done(replica.replica_id, time.monotonic() - t0, verdict is True)

    def _retrying(self, group: ModelGroup, replica: Replica, error: BackendUnavailable) -> None:
        group.retries += 1
        if self.observer:
            self.observer.retried(group.name)
        log.warning("replica %s %s before first token (%s); retrying elsewhere", replica.replica_id,
                    "was busy" if isinstance(error, BackendBusy) else "failed", error)

    async def start(self) -> None:
        """Start every replica concurrently. One that fails stays down (the others serve); if every
        replica fails to start, raise: a server that can serve nothing should not come up.
        With models on demand nothing starts here: each model starts at its first request."""
        if self.on_demand is not None:
            return
        results = await asyncio.gather(*(self._start_one(r) for r in self.all_replicas()))
        if results and not any(results):
            raise RuntimeError("no replica could be started; see the errors above")

    async def _start_one(self, replica: Replica) -> bool:
        try:
            await replica.backend.start()
        except Exception as e:  # noqa: BLE001 - a replica failing to load must not stop the others
            log.error("replica %s failed to start: %s", replica.replica_id, e)
            replica.mark_down()
            return False
        await self._check_one(replica)
        return True

    async def start_group(self, group: ModelGroup) -> bool:
        """Start one model's replicas (models on demand); True when at least one serves."""
        return any(await asyncio.gather(*(self._start_one(r) for r in group.replicas)))

    async def stop_group(self, group: ModelGroup) -> None:
        for r in group.replicas:
            r.mark_down()
        await asyncio.gather(*(r.backend.stop() for r in group.replicas), return_exceptions=True)

    async def stop(self) -> None:
        await asyncio.gather(*(r.backend.stop() for r in self.all_replicas()), return_exceptions=True)

    async def check_health(self) -> None:
        # An unloaded model's replicas are down by design: probing them would only log noise.
        live = [r for r in self.all_replicas() if self.on_demand is None or self.on_demand.resident(r.model)]
        await asyncio.gather(*(self._check_one(r) for r in live))

    async def _check_one(self, replica: Replica) -> None:
        try:
            ok = await asyncio.wait_for(replica.backend.check_health(), timeout=5.0)
        except Exception:  # noqa: BLE001 - any failure of a probe means down
            ok = False
        replica.breaker.probe(ok)  # after its cooldown, the probe is the breaker's trial
        if ok and not replica.healthy:
            log.info("replica %s is up", replica.replica_id)
            replica.mark_up()
            # Faults counted while it was down are explained by its being down: start afresh, so a
            # replica that restarted is not kept out for a cooldown after it came back.
            replica.breaker.reset()
        elif not ok and replica.healthy:
            log.warning("replica %s is down", replica.replica_id)
            replica.mark_down()

    async def health_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check_health()
