"""Fakes and helpers for the ModelPool tests: fake backends (the tests are about the pool's
bookkeeping, not about models), a fake clock where the pool reads time, and small drivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serve.backends.base import BackendUnavailable, Delta, GenerateRequest, ModelInfo, StreamEvent, Usage
from serve.config import ModelConfig, OnDemandConfig, ReplicaSpec
from serve.router.on_demand import ModelPool
from serve.router.policy import make_policy
from serve.router.replica import Replica
from serve.router.router import ModelGroup, Router


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
