"""The per-request wall-clock limit (Limits.request_timeout_s), applied to a request's event stream.

Wrapping the events (not the HTTP response) gives each phase the right answer from one place: a
timeout before the first event raises out of `prime` or the non-streaming collect, so the client
gets a 408; one after the stream started reaches `sse_body`, which sends an SSE error event and
[DONE]. Either way the wrapped source is closed, which aborts the generation and frees its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from serve.api.errors import APIError

T = TypeVar("T")


def timed_out(timeout_s: float) -> APIError:
    return APIError(408, f"the request took longer than this server's limit of {timeout_s:g} s",
                    code="request_timeout")


async def with_deadline(events: AsyncIterator[T], timeout_s: float) -> AsyncIterator[T]:
    """Yield from `events` until `timeout_s` seconds after the first pull; 0 means no limit."""
    deadline = asyncio.get_running_loop().time() + timeout_s if timeout_s > 0 else None
    try:
        while True:
            cm = asyncio.timeout_at(deadline)
            try:
                async with cm:
                    ev = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError as e:
                if not cm.expired():  # the source's own TimeoutError is not ours to relabel
                    raise
                raise timed_out(timeout_s) from e
            yield ev
    finally:
        await events.aclose()  # type: ignore[attr-defined]
