"""Wraps a request's event stream to record latency, token and outcome metrics as it flows."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from serve.api.metrics import Metrics
from serve.backends.base import Delta, StreamEvent, Usage


async def metered(events: AsyncIterator[StreamEvent], metrics: Metrics, model: str,
                  started: float) -> AsyncIterator[StreamEvent]:
    labels = metrics.running.labels(model)
    labels.inc()
    first: float | None = None
    last = started
    finish: dict[int, str] = {}
    try:
        async for ev in events:  # closed in `finally`: an abort must reach the backend at once
            now = time.monotonic()
            if isinstance(ev, Delta) and (ev.text or ev.token_ids):
                if first is None:
                    first = now
                    metrics.ttft.labels(model).observe(now - started)
                    metrics.live.first_token(now - started)
                else:
                    metrics.itl.labels(model).observe(now - last)
                    metrics.live.gap(now - last)
                last = now
                metrics.live.output(len(ev.token_ids) or 1)  # a backend without ids: one per chunk
            if isinstance(ev, Delta) and ev.finish_reason:
                finish[ev.index] = ev.finish_reason
            if isinstance(ev, Usage):
                _record_usage(metrics, model, ev)
            yield ev
        metrics.e2e.labels(model).observe(time.monotonic() - started)
        for reason in finish.values():
            metrics.success.labels(model, reason).inc()
    finally:
        labels.dec()
        await events.aclose()  # type: ignore[attr-defined]


def _record_usage(metrics: Metrics, model: str, u: Usage) -> None:
    metrics.prompt_tokens.labels(model).inc(u.prompt_tokens)
    metrics.generation_tokens.labels(model).inc(u.completion_tokens)
    metrics.cached_tokens.labels(model).inc(u.cached_tokens)
    if u.queue_time_s is not None:
        metrics.queue.labels(model).observe(u.queue_time_s)
