"""Merge several event streams into one: n samples run as separate requests, or a completions batch
of several prompts. Choice indices are shifted; the Usage events are combined into one at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from serve.backends.base import Delta, StreamEvent, Usage

_DONE = object()


async def merge(streams: list[AsyncIterator[StreamEvent]], offsets: list[int],
                shared_prompt: bool) -> AsyncIterator[StreamEvent]:
    """`shared_prompt`: the streams ran one prompt (n fan-out), so prompt tokens count once."""
    if len(streams) == 1 and offsets[0] == 0:
        # Closing this generator must close the stream now (that aborts the generation), not when the
        # garbage collector finalizes it: a reference cycle can delay that by seconds.
        async with contextlib.aclosing(streams[0]) as only:  # type: ignore[type-var]
            async for ev in only:
                yield ev
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[StreamEvent], offset: int) -> None:
        try:
            async for ev in stream:
                await queue.put(replace(ev, index=ev.index + offset) if isinstance(ev, Delta) else ev)
            await queue.put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            await queue.put(e)
            raise

    tasks = [asyncio.create_task(pump(s, o)) for s, o in zip(streams, offsets, strict=True)]
    usages: list[Usage] = []
    try:
        remaining = len(tasks)
        while remaining:
            ev = await queue.get()
            if ev is _DONE:
                remaining -= 1
            elif isinstance(ev, BaseException):
                raise ev
            elif isinstance(ev, Usage):
                usages.append(ev)
            else:
                yield ev
        if usages:
            yield combine_usage(usages, shared_prompt)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for s in streams:
            with contextlib.suppress(BaseException):
                await s.aclose()  # type: ignore[attr-defined]


def combine_usage(usages: list[Usage], shared_prompt: bool) -> Usage:
    prompt = usages[0].prompt_tokens if shared_prompt else sum(u.prompt_tokens for u in usages)
    cached = usages[0].cached_tokens if shared_prompt else sum(u.cached_tokens for u in usages)
    queue_times = [u.queue_time_s for u in usages if u.queue_time_s is not None]
    return Usage(prompt_tokens=prompt, completion_tokens=sum(u.completion_tokens for u in usages),
                 cached_tokens=cached, queue_time_s=min(queue_times) if queue_times else None)
