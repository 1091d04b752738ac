"""SSE framing, priming a stream so that errors before the first token get a real status code, and
running a non-streaming request that stops when its client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request

from serve.api.errors import APIError

log = logging.getLogger("sluice.api")
T = TypeVar("T")
DONE = "data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def prime(events: AsyncIterator[T]) -> tuple[T | None, AsyncIterator[T]]:
    """Pull the first event now, so that failures before it raise here (and become an HTTP status)."""
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        return None, events
    return first, events


async def chain_first(first: T | None, rest: AsyncIterator[T]) -> AsyncIterator[T]:
    if first is not None:
        yield first
    async for ev in rest:
        yield ev


async def sse_body(frames: AsyncIterator[str], to_error: Callable[[BaseException], APIError],
                   events: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Yield SSE frames; an error mid-stream becomes an SSE error event and the stream still ends
    with [DONE]. Cancellation (client gone) closes the event source, which aborts the generation."""
    try:
        async for frame in frames:
            yield frame
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure must reach the client as an event
        yield to_error(e).sse()
    finally:
        with contextlib.suppress(BaseException):
            await events.aclose()  # type: ignore[attr-defined]
    yield DONE


async def until_disconnect(request: Request, work: Awaitable[T], poll_s: float = 0.25) -> T:
    """Run `work`; if the client disconnects first, cancel it (its cleanup aborts the generation)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise APIError(499, "client disconnected", kind="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
