"""A replica: one backend instance serving a model, with the counters the router decides by."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from serve.backends.base import Backend


@dataclass
class Replica:
    model: str
    replica_id: str  # e.g. "smollm2-135m-instruct/0:llamacpp"
    backend: Backend
    healthy: bool = False  # True once started and its health check passes
    outstanding: int = 0  # requests dispatched to it and not finished
    consecutive_failures: int = 0
    last_check: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # An in-process backend that knows at once when it dies and comes back (the native engine's
        # restart) reports it here, so routing and /health do not wait for the next probe.
        if hasattr(self.backend, "health_listener"):
            self.backend.health_listener = self._on_backend_health

    def _on_backend_health(self, up: bool) -> None:
        if up:
            self.mark_up()
        else:
            self.mark_down()

    def mark_down(self) -> None:
        self.healthy = False
        self.consecutive_failures += 1

    def mark_up(self) -> None:
        self.healthy = True
        self.consecutive_failures = 0
