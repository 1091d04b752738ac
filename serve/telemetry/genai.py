"""GenAI semantic-convention attributes on the request span, and its phases as child spans.

The engine does not report when prefill ended, so the phases are derived from what the stream shows:
routing (the router marks the dispatch), queueing (the backend's queue time, measured from the
dispatch), prefill (up to the first token) and decode (first token to the last event). Each phase
span is written once the request ends, with its measured start and end times.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serve.backends.base import Delta, StreamEvent, Usage
from serve.telemetry import tracing


@dataclass
class _Marks:
    """Times (ns since the epoch, as OTel wants) one request passed; shared by the request's tasks."""

    start: int = field(default_factory=time.time_ns)
    dispatched: int | None = None
    first_token: int | None = None


_marks: contextvars.ContextVar[_Marks | None] = contextvars.ContextVar("sluice_trace_marks", default=None)


def routed(replica_id: str, backend: str, model: str) -> None:
    """Called by the router when it hands the request to a replica: a `route` child span and the
    replica on the request span. The first dispatch wins (a retry keeps the original times)."""
    if not tracing.enabled():
        return
    from opentelemetry import trace

    now = time.time_ns()
    marks = _marks.get()
    parent = trace.get_current_span()
    parent.set_attribute("sluice.replica", replica_id)
    parent.set_attribute("sluice.backend", backend)
    start = marks.start if marks and marks.dispatched is None else now
    s = tracing.tracer().start_span("route", start_time=start,
                                    attributes={"sluice.replica": replica_id, "gen_ai.request.model": model})
    s.end(end_time=now)
    if marks and marks.dispatched is None:
        marks.dispatched = now


def traced(events: AsyncIterator[StreamEvent], req: Any, model: str, rid: str) -> AsyncIterator[StreamEvent]:
    """Name the current request span "{operation} {model}", set the request attributes, and follow
    the stream for usage, finish reasons and phase times. Returns `events` untouched when off."""
    if not tracing.enabled():
        return events
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return events
    op = "chat" if hasattr(req, "messages") else "text_completion"
    span.update_name(f"{op} {model}")
    params = req.sampling_params()
    attrs = {"gen_ai.operation.name": op, "gen_ai.request.model": model, "gen_ai.response.id": rid,
             "gen_ai.request.max_tokens": params.max_tokens, "gen_ai.request.temperature": params.temperature,
             "gen_ai.request.top_p": params.top_p, "gen_ai.system": "sluice", "sluice.stream": bool(req.stream)}
    span.set_attributes({k: v for k, v in attrs.items() if v is not None})
    marks = _Marks()
    _marks.set(marks)
    return _follow(events, span, marks)


async def _follow(events: AsyncIterator[StreamEvent], span: Any, marks: _Marks) -> AsyncIterator[StreamEvent]:
    finish: dict[int, str] = {}
    usage: Usage | None = None
    try:
        async for ev in events:
            if isinstance(ev, Usage):
                usage = ev
            elif isinstance(ev, Delta):
                if marks.first_token is None and (ev.text or ev.token_ids):
                    marks.first_token = time.time_ns()
                if ev.finish_reason:
                    finish[ev.index] = ev.finish_reason
            yield ev
    finally:
        _finish(span, marks, usage, finish)


def _finish(span: Any, marks: _Marks, usage: Usage | None, finish: dict[int, str]) -> None:
    end = time.time_ns()
    if finish:
        span.set_attribute("gen_ai.response.finish_reasons", [finish[i] for i in sorted(finish)])
    queue_ns = 0
    if usage is not None:
        span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                             "gen_ai.usage.output_tokens": usage.completion_tokens,
                             "sluice.cached_tokens": usage.cached_tokens})
        if usage.queue_time_s is not None:
            queue_ns = int(usage.queue_time_s * 1e9)
            span.set_attribute("sluice.queue_time_s", usage.queue_time_s)
    if marks.first_token is not None:
        span.set_attribute("sluice.ttft_s", (marks.first_token - marks.start) / 1e9)
    _phases(span, marks, queue_ns, end)


def _phases(span: Any, marks: _Marks, queue_ns: int, end: int) -> None:
    """queue -> prefill -> decode, laid end to end from the dispatch; a phase that never began is
    left out (an error before the first token has no decode)."""
    from opentelemetry import trace

    if marks.dispatched is None:
        return
    ctx = trace.set_span_in_context(span)
    first = marks.first_token
    queued_until = min(marks.dispatched + queue_ns, first if first is not None else end)
    spans = [("queue", marks.dispatched, queued_until)]
    if first is not None:
        spans += [("prefill", queued_until, first), ("decode", first, end)]
    for name, start, stop in spans:
        tracing.tracer().start_span(name, context=ctx, start_time=start).end(end_time=max(start, stop))
