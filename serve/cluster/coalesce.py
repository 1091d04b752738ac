"""Stream events in batches: the first at once, later ones gathered for up to an interval.

A Ray streaming generator pays per item on both ends (an object per item, its ref reported to the
caller, the caller's wake-up); at one item per token those costs land on the cores the engine
decodes on. `coalesce` yields lists instead: the first event alone and at once (time to first token
is untouched), then everything that arrives until `interval_s` after the previous send, with the end
of the stream or an error cutting the wait short. A token waits at most `interval_s`; when tokens
come slower than that, each goes alone and at once. Order is kept, nothing is merged or dropped.

The source is read by a task of its own, so waiting on a deadline never cancels the source mid-step;
closing (or cancelling) the batched stream cancels that task, which closes the source: the client
that went away still aborts the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


async def coalesce(source: AsyncIterator[T], interval_s: float) -> AsyncIterator[list[T]]:
    """Lists of `source`'s events (see the module docstring); `interval_s <= 0`: one per event.
    An exception from `source` is raised after the events before it have been yielded."""
    if interval_s <= 0:
        try:
            async for event in source:
                yield [event]
        finally:
            await _close(source)
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()
    ended = asyncio.Event()  # the source is done (or failed): stop waiting for more
    pump = asyncio.ensure_future(_pump(source, queue, ended))
    loop = asyncio.get_running_loop()
    try:
        last_send = None  # None: nothing sent yet, the first event goes alone
        while True:
            items = [await queue.get()]
            if last_send is not None and not ended.is_set():
                # One wait per batch, not per event: the events queue up meanwhile.
                left = last_send + interval_s - loop.time()
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ended.wait(), left)
            while not queue.empty():
                items.append(queue.get_nowait())
            batch = [i for i in items if i is not _END and not isinstance(i, _Raised)]
            if batch:
                yield batch
                last_send = loop.time()
            if len(batch) < len(items):  # the end, or an error after the events before it
                last = items[-1]
                if isinstance(last, _Raised):
                    raise last.error
                return
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def _pump(source: AsyncIterator[Any], queue: asyncio.Queue[Any], ended: asyncio.Event) -> None:
    try:
        async for event in source:
            queue.put_nowait(event)
    except Exception as e:  # noqa: BLE001 - handed to the reader, raised there in order
        queue.put_nowait(_Raised(e))
    else:
        queue.put_nowait(_END)
    finally:
        ended.set()
        await _close(source)


async def _close(source: AsyncIterator[Any]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
