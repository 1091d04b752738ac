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

    def mark_down(self) -> None:
        self.healthy = False
        self.consecutive_failures += 1

    def mark_up(self) -> None:
        self.healthy = True
        self.consecutive_failures = 0
