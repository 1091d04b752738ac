"""A short memory of recent latencies and output tokens, for the dashboard's per-second figures.

Prometheus histograms answer "since start" with bucket resolution; a page that redraws every second
wants "the last 30 s" with real percentiles. So the metering wrapper also drops each sample here:
bounded deques of (monotonic time, value), pruned by age on read. Memory is bounded by `max_samples`
per series whatever the load.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 30.0


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
    """Nearest-rank percentiles, keyed "p50", "p90", "p99"; None when there is no sample."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100)}"
        out[key] = ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))] if ordered else None
    return out


class _Series:
    def __init__(self, max_samples: int) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, t: float, value: float) -> None:
        self.samples.append((t, value))

    def since(self, t0: float) -> list[float]:
        return [v for t, v in self.samples if t >= t0]


class LiveStats:
    def __init__(self, window_s: float = WINDOW_S, max_samples: int = 20000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.ttft = _Series(max_samples)
        self.itl = _Series(max_samples)
        self.tokens = _Series(max_samples)  # (time a chunk arrived, output tokens in it)

    def first_token(self, seconds: float) -> None:
        self.ttft.add(self.clock(), seconds)

    def gap(self, seconds: float) -> None:
        self.itl.add(self.clock(), seconds)

    def output(self, n_tokens: int) -> None:
        self.tokens.add(self.clock(), float(n_tokens))

    def tokens_per_s(self, over_s: float = 2.0) -> float:
        """Output tokens per second over the last `over_s` seconds (2 s: smooth enough to read, still
        drops to zero within two redraws when generation stops)."""
        now = self.clock()
        return sum(self.tokens.since(now - over_s)) / over_s

    def snapshot(self) -> dict[str, object]:
        t0 = self.clock() - self.window_s
        return {"window_s": self.window_s, "output_tokens_per_s": round(self.tokens_per_s(), 3),
                "ttft_s": percentiles(self.ttft.since(t0)), "itl_s": percentiles(self.itl.since(t0))}
