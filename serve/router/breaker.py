"""Circuit breaker for one replica: closed -> open after N consecutive faults -> half-open after a
cooldown (one trial) -> closed on success, open again on failure.

Why not mark a replica down on its first fault: one 5xx or one reset connection says little about the
next request, and with few replicas a single blip would send the whole load to the others until the
next health probe. Backpressure (429) is no fault at all and never reaches the breaker.

Results of requests that started in an earlier state are stale: once the breaker is open only the
half-open trial's verdict (or a health probe) moves it, so a slow stream that began before the
replica broke cannot close it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from serve.config import BreakerConfig


class BreakerState(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._failures = 0  # consecutive faults while closed
        self._opened_at: float | None = None  # None while closed
        self._trial_out = False  # half-open: the one trial request is in flight

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.config.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def retry_in(self) -> float:
        """Seconds until the breaker lets a trial through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.config.cooldown_s - self._clock())

    def available(self) -> bool:
        """May a request be sent now? Read-only: the router filters candidates with it."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_out)

    def acquire(self) -> bool:
        """Take the go-ahead for one request (call only when `available()`); True when that request is
        the half-open trial, whose verdict must be reported with `trial=True`."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_out = True
            return True
        return False

    def success(self, trial: bool = False) -> None:
        state = self.state
        if state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and trial):
            self._close()

    def failure(self, trial: bool = False) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.config.failures:
                self._open()
        elif state is BreakerState.HALF_OPEN and trial:
            self._open()

    def release(self, trial: bool = False) -> None:
        """The request ended without a verdict (client gone, client error, backpressure): if it was the
        trial, let another one through."""
        if trial:
            self._trial_out = False

    def probe(self, ok: bool) -> None:
        """A health probe counts as the trial once the cooldown is over; before that it is ignored, so
        an upstream whose /health answers while its requests fail still waits out its cooldown."""
        if self.state is not BreakerState.HALF_OPEN:
            return
        if ok:
            self._close()
        else:
            self._open()

    def reset(self) -> None:
        """Forget the past: the replica was seen down and came back (its probe passed again)."""
        self._close()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._trial_out = False

    def _close(self) -> None:
        self._opened_at = None
        self._failures = 0
        self._trial_out = False
