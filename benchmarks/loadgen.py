"""Load patterns: closed loop (sync, concurrency N) and open loop (rate R with gamma arrivals).

One event loop drives every request. The HTTP client's connection pool is sized to the load so it
never throttles it silently (see `make_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import httpx

from benchmarks.client import Counter, Target, send
from benchmarks.record import RequestRecord
from benchmarks.workload import Conversation

LOADS = ("sync", "concurrency", "rate", "sweep")


@dataclass(frozen=True)
class LoadSpec:
    kind: str = "concurrency"  # sync | concurrency | rate (a sweep is a list of these)
    concurrency: int = 1  # closed loop: conversations in flight
    rate: float = math.inf  # open loop: arrivals per second (inf: all at once)
    burstiness: float = 1.0  # gamma shape of inter-arrival gaps; 1.0 = Poisson
    duration_s: float | None = None  # stop sending new work after this long (else: the whole workload)
    max_concurrency: int | None = None  # open loop: cap on requests in flight (None: no cap)
    seed: int = 0
    # Stop sending new work after this long even if the workload is not done (no cycling); None: off.
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("sync", "concurrency", "rate"):
            raise ValueError(f"unknown load {self.kind!r}; choose one of: {', '.join(LOADS)}")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be >= 1")
        if self.kind == "rate" and not self.rate > 0:
            raise ValueError("--rate must be > 0 (or inf)")
        if self.burstiness <= 0:
            raise ValueError("--burstiness must be > 0")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("--duration must be > 0")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError("--time-limit must be > 0")

    @property
    def send_deadline_s(self) -> float | None:
        """Seconds after the start when no new work may be sent."""
        limits = [t for t in (self.duration_s, self.time_limit_s) if t is not None]
        return min(limits) if limits else None

    @property
    def in_flight(self) -> int | None:
        """Most requests this load can have open at once (None: unbounded)."""
        if self.kind == "sync":
            return 1
        if self.kind == "concurrency":
            return self.concurrency
        return self.max_concurrency

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"kind": self.kind}
        if self.kind == "concurrency":
            d["concurrency"] = self.concurrency
        if self.kind == "rate":
            d.update(rate=None if math.isinf(self.rate) else self.rate, burstiness=self.burstiness,
                     max_concurrency=self.max_concurrency)
        d["duration_s"] = self.duration_s
        if self.time_limit_s is not None:
            d["time_limit_s"] = self.time_limit_s
        return d


def raise_fd_limit() -> int:
    """An open loop can hold thousands of sockets: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 16 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def make_client(load: LoadSpec) -> httpx.AsyncClient:
    """A pool at least as wide as the load, so queueing happens in the server, not in our client."""
    raise_fd_limit()
    width = load.in_flight
    limits = httpx.Limits(max_connections=None if width is None else width + 4,
                          max_keepalive_connections=None if width is None else width + 4)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=30.0))


def arrival_offsets(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Send times (s from start) with gamma gaps of mean 1/rate; shape `burstiness` (1.0: Poisson)."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    scale = 1.0 / (rate * burstiness)
    return list(itertools.accumulate(rng.gammavariate(burstiness, scale) for _ in range(n)))


class Runner:
    """Sends the turns of conversations and collects one record per request."""

    def __init__(self, client: httpx.AsyncClient, target: Target, count_tokens: Counter | None,
                 on_done: Callable[[RequestRecord], None] | None = None) -> None:
        self.client, self.target, self.count_tokens = client, target, count_tokens
        self.on_done = on_done
        self.records: list[RequestRecord] = []
        self._next = itertools.count()

    async def conversation(self, conv: Conversation) -> None:
        history: list[dict[str, str]] = []
        for turn in conv.turns:
            rec, text = await send(self.client, self.target, turn, history, next(self._next), self.count_tokens)
            self.records.append(rec)
            if self.on_done:
                self.on_done(rec)
            if not rec.ok:
                return  # a later turn would build on an answer that never came
            history += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": text}]


def _work(convs: Sequence[Conversation], duration_s: float | None) -> Iterator[Conversation]:
    """The workload once, or cycled until the deadline when running for a duration."""
    return itertools.cycle(convs) if duration_s else iter(convs)


async def run_load(runner: Runner, load: LoadSpec, convs: Sequence[Conversation]) -> list[RequestRecord]:
    if load.kind == "rate":
        await _open_loop(runner, load, convs)
    else:
        await _closed_loop(runner, 1 if load.kind == "sync" else load.concurrency, load, convs)
    return sorted(runner.records, key=lambda r: r.index)


async def _closed_loop(runner: Runner, width: int, load: LoadSpec, convs: Sequence[Conversation]) -> None:
    work = _work(convs, load.duration_s)
    limit = load.send_deadline_s
    deadline = None if limit is None else time.monotonic() + limit

    async def worker() -> None:
        for conv in work:  # the iterator is shared: each worker takes the next conversation
            if deadline is not None and time.monotonic() >= deadline:
                return
            await runner.conversation(conv)

    await asyncio.gather(*(worker() for _ in range(width)))


async def _open_loop(runner: Runner, load: LoadSpec, convs: Sequence[Conversation]) -> None:
    gate = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
    n = len(convs) if not load.duration_s else math.ceil(load.duration_s * min(load.rate, 1e6)) + 1
    offsets = arrival_offsets(n, load.rate, load.burstiness, load.seed)
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []

    async def one(conv: Conversation) -> None:
        if gate is None:
            await runner.conversation(conv)
            return
        async with gate:
            await runner.conversation(conv)

    limit = load.send_deadline_s
    for conv, off in zip(_work(convs, load.duration_s), offsets, strict=False):
        if limit is not None and off >= limit:
            break
        delay = start + off - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # absolute schedule: lateness of one send does not shift the rest
        tasks.append(asyncio.create_task(one(conv)))
    await asyncio.gather(*tasks)
