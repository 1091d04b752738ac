"""A replica: one backend instance serving a model, with the counters the router decides by."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from serve.backends.base import Backend
from serve.router.breaker import BreakerState, CircuitBreaker


@dataclass
class Replica:
    model: str
    replica_id: str  # e.g. "smollm2-135m-instruct/0:llamacpp"
    backend: Backend
    # Started and passing its health probe. Request faults do not clear it: they go to the breaker,
    # which takes the replica out of rotation only after several in a row.
    healthy: bool = False
    outstanding: int = 0  # requests dispatched to it and not finished
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    last_check: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # An in-process backend that knows at once when it dies and comes back (the native engine's
        # restart) reports it here, so routing and /health do not wait for the next probe.
        if hasattr(self.backend, "health_listener"):
            self.backend.health_listener = self._on_backend_health

    def _on_backend_health(self, up: bool) -> None:
        if up:
            self.mark_up()
            self.breaker.reset()  # faults while it was down are explained: no cooldown after a restart
        else:
            self.mark_down()

    @property
    def consecutive_failures(self) -> int:
        return self.breaker.failures

    @property
    def up(self) -> bool:
        """What /health and the replica_healthy gauge report: probed healthy and its breaker not open
        (a half-open breaker is waiting for its trial, so the replica counts as up)."""
        return self.healthy and self.breaker.state is not BreakerState.OPEN

    def routable(self) -> bool:
        """May the router send it a request now (a half-open breaker with its trial out may not)?"""
        return self.healthy and self.breaker.available()

    def mark_down(self) -> None:
        self.healthy = False

    def mark_up(self) -> None:
        self.healthy = True
