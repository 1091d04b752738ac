"""Per-key limits: requests/min and tokens/min token buckets and a concurrency cap.

Tokens (prompt + completion) are known only after a request ends, so a request is charged twice:
an estimate up front (the body's bytes / 4, the usual English bytes-per-token ratio, at least 1) and
the difference to the real usage when it ends (the whole estimate back when it produced no usage).
A request is admitted while the tokens bucket is above zero, so one large request may overdraw it;
the overdraft is then repaid, at the refill rate, before the next request gets in. Over any window
longer than one request the rate holds, and no request is refused for a size we could only guess.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serve.tenancy.keys import KeySpec

Clock = Callable[[], float]
BYTES_PER_TOKEN = 4


class TokenBucket:
    """`per_minute` tokens of capacity, refilled continuously at per_minute / 60 per second; starts full.
    The level may go below zero (a charge after the fact); it never rises above capacity."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._level = self.capacity
        self._at = clock()

    def level(self) -> float:
        now = self.clock()
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now
        return self._level

    def charge(self, n: float) -> None:
        """Take n (negative: give back), whatever the level."""
        self._level = min(self.capacity, self.level() - n)

    def wait_s(self, need: float) -> float:
        """Seconds until the level reaches `need` (0 when it already has)."""
        return max(0.0, (need - self.level()) / self.rate)

    def reset_s(self) -> float:
        return self.wait_s(self.capacity)


def estimate_tokens(body_bytes: int | None) -> int:
    return max(1, (body_bytes or 0) // BYTES_PER_TOKEN)


def duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: "20ms", "1s", "6m0s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass
class Refusal:
    message: str
    retry_after_s: float
    headers: dict[str, str]


@dataclass
class Ticket:
    """An admitted request: settle it once, when it ends, with its real token count (None: unknown)."""

    limiter: TenantLimiter
    estimate: int
    settled: bool = field(default=False)

    def settle(self, tokens: int | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.limiter.release(self.estimate, tokens)


class TenantLimiter:
    def __init__(self, spec: KeySpec, clock: Clock = time.monotonic) -> None:
        self.spec = spec
        self.requests = TokenBucket(spec.requests_per_minute, clock) if spec.requests_per_minute else None
        self.tokens = TokenBucket(spec.tokens_per_minute, clock) if spec.tokens_per_minute else None
        self.in_flight = 0

    def admit(self, estimate: int) -> Ticket | Refusal:
        """Check every limit before taking from any, so a refusal costs nothing."""
        cap = self.spec.max_concurrent
        if cap is not None and self.in_flight >= cap:
            return Refusal(f"Rate limit reached for key '{self.spec.id}': {cap} concurrent requests. "
                           "Wait for one to finish.", 1.0, self.headers())
        if self.requests is not None and self.requests.level() < 1:
            return self._refuse("requests per minute", self.spec.requests_per_minute, self.requests.wait_s(1))
        if self.tokens is not None and self.tokens.level() <= 0:
            return self._refuse("tokens per minute", self.spec.tokens_per_minute, self.tokens.wait_s(1e-9))
        if self.requests is not None:
            self.requests.charge(1)
        if self.tokens is not None:
            self.tokens.charge(estimate)
        self.in_flight += 1
        return Ticket(self, estimate)

    def _refuse(self, what: str, limit: int | None, wait: float) -> Refusal:
        return Refusal(f"Rate limit reached for key '{self.spec.id}' on {what}: limit {limit}. "
                       f"Please try again in {duration(wait)}.", wait, self.headers())

    def release(self, estimate: int, tokens: int | None) -> None:
        self.in_flight -= 1
        if self.tokens is not None:
            self.tokens.charge((tokens if tokens is not None else 0) - estimate)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
                out[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level())))
                out[f"x-ratelimit-reset-{name}"] = duration(bucket.reset_s())
        return out


def retry_after(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client that obeys it is admitted."""
    return str(max(1, math.ceil(seconds)))
