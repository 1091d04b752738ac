"""Router: model name -> replicas. Admission (bounded, fail fast), policy choice, retry before the
first token on another replica, and health tracking. Talks only to the Backend protocol."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from serve.backends.base import BackendUnavailable, GenerateRequest, StreamEvent
from serve.config import ModelConfig
from serve.router.policy import Policy, make_policy
from serve.router.replica import Replica

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
        return [r for r in self.replicas if r.healthy and r.replica_id not in exclude]


RequestFactory = Callable[[Replica], Awaitable[GenerateRequest]]


class RouterObserver(Protocol):
    """Told what the router did; the HTTP layer turns it into metrics."""

    def replica_done(self, replica_id: str, seconds: float, ok: bool) -> None: ...

    def retried(self, model: str) -> None: ...


class Router:
    def __init__(self, groups: list[ModelGroup], observer: RouterObserver | None = None) -> None:
        self.observer = observer
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
        """Admit, pick a replica, stream its events. A replica failing before its first event is
        marked down and the request moves to another healthy replica; after the first event a
        failure propagates (the client already has partial output)."""
        if group.admitted >= group.config.max_outstanding:
            raise Overloaded(f"model '{group.name}' has {group.admitted} requests in flight "
                             f"(limit {group.config.max_outstanding}); retry later")
        group.admitted += 1
        try:
            tried: set[str] = set()
            while True:
                replica = self.pick(group, prefix_key, tried)
                tried.add(replica.replica_id)
                started, ok = False, False
                t0 = time.monotonic()
                replica.outstanding += 1
                try:
                    request = await make_request(replica)
                    agen = replica.backend.generate(request)
                    try:
                        async for event in agen:
                            started = True
                            yield event
                    finally:
                        await agen.aclose()  # type: ignore[attr-defined]
                    ok = True
                    return
                except BackendUnavailable as e:
                    if started:
                        raise
                    replica.mark_down()
                    group.retries += 1
                    if self.observer:
                        self.observer.retried(group.name)
                    log.warning("replica %s failed before first token (%s); retrying", replica.replica_id, e)
                finally:
                    replica.outstanding -= 1
                    if self.observer:
                        self.observer.replica_done(replica.replica_id, time.monotonic() - t0, ok)
        finally:
            group.admitted -= 1

    async def start(self) -> None:
        """Start every replica concurrently. One that fails stays down (the others serve); if every
        replica fails to start, raise: a server that can serve nothing should not come up."""
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

    async def stop(self) -> None:
        await asyncio.gather(*(r.backend.stop() for r in self.all_replicas()), return_exceptions=True)

    async def check_health(self) -> None:
        await asyncio.gather(*(self._check_one(r) for r in self.all_replicas()))

    async def _check_one(self, replica: Replica) -> None:
        try:
            ok = await asyncio.wait_for(replica.backend.check_health(), timeout=5.0)
        except Exception:  # noqa: BLE001 - any failure of a probe means down
            ok = False
        if ok and not replica.healthy:
            log.info("replica %s is up", replica.replica_id)
            replica.mark_up()
        elif not ok and replica.healthy:
            log.warning("replica %s is down", replica.replica_id)
            replica.mark_down()

    async def health_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check_health()
