"""merge(): n samples or a batch of prompts as one stream; indices shifted, usage combined, failures
propagate and cancel the sibling streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve.backends.base import Delta, StreamEvent, Usage
from serve.backends.merge import combine_usage, merge


async def scripted(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """A stream that yields `events` with a scheduling point between them, so streams interleave."""
    for ev in events:
        await asyncio.sleep(0)
        yield ev


def choice_events(n: int, texts: list[str], usage: Usage) -> list[StreamEvent]:
    out: list[StreamEvent] = [Delta(i, t) for t in texts for i in range(n)]
    out += [Delta(i, "", finish_reason="stop") for i in range(n)]
    return [*out, usage]


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [ev async for ev in stream]


def test_indices_are_offset_and_order_within_a_stream_is_kept() -> None:
    a = scripted(choice_events(2, ["a", "b"], Usage(4, 2)))
    b = scripted(choice_events(2, ["x", "y", "z"], Usage(6, 3)))
    events = asyncio.run(collect(merge([a, b], [0, 2], shared_prompt=False)))
    deltas = [e for e in events if isinstance(e, Delta)]
    texts: dict[int, str] = {}
    for d in deltas:
        texts[d.index] = texts.get(d.index, "") + d.text
    assert texts == {0: "ab", 1: "ab", 2: "xyz", 3: "xyz"}
    assert sorted(d.index for d in deltas if d.finish_reason) == [0, 1, 2, 3]
    assert isinstance(events[-1], Usage) and sum(isinstance(e, Usage) for e in events) == 1


def test_usage_for_separate_prompts_sums_everything() -> None:
    a = scripted([Delta(0, "a"), Usage(4, 2, cached_tokens=1, queue_time_s=0.3)])
    b = scripted([Delta(0, "b"), Usage(6, 3, cached_tokens=2, queue_time_s=0.1)])
    usage = asyncio.run(collect(merge([a, b], [0, 1], shared_prompt=False)))[-1]
    assert usage == Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=3, queue_time_s=0.1)


def test_usage_for_a_shared_prompt_counts_the_prompt_once() -> None:
    a = scripted([Delta(0, "a"), Usage(4, 2, cached_tokens=1)])
    b = scripted([Delta(0, "b"), Usage(4, 7, cached_tokens=1)])
    usage = asyncio.run(collect(merge([a, b], [0, 1], shared_prompt=True)))[-1]
    assert usage == Usage(prompt_tokens=4, completion_tokens=9, cached_tokens=1, queue_time_s=None)


def test_combine_usage_directly() -> None:
    us = [Usage(3, 1), Usage(3, 2, queue_time_s=0.5)]
    assert combine_usage(us, True) == Usage(3, 3, 0, 0.5)
    assert combine_usage(us, False) == Usage(6, 3, 0, 0.5)


def test_single_stream_passes_through_unchanged() -> None:
    events = [Delta(0, "a"), Delta(1, "b", finish_reason="stop"), Usage(2, 2)]
    assert asyncio.run(collect(merge([scripted(events)], [0], shared_prompt=True))) == events


def test_single_stream_with_offset_is_shifted() -> None:
    events = asyncio.run(collect(merge([scripted([Delta(0, "a"), Usage(1, 1)])], [3], shared_prompt=False)))
    assert events == [Delta(3, "a"), Usage(1, 1)]


def test_no_usage_means_no_usage_event() -> None:
    events = asyncio.run(collect(merge([scripted([Delta(0, "a")]), scripted([Delta(0, "b")])], [0, 1], False)))
    assert all(isinstance(e, Delta) for e in events) and len(events) == 2


async def forever(log: list[str], name: str) -> AsyncIterator[StreamEvent]:
    """A stream that yields once then waits forever, like a slow generation."""
    try:
        yield Delta(0, "slow")
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        log.append(f"{name}:cancelled")
        raise
    except GeneratorExit:
        log.append(f"{name}:closed")
        raise
    yield Delta(0, "never")  # pragma: no cover


async def failing(after: int) -> AsyncIterator[StreamEvent]:
    for i in range(after):
        await asyncio.sleep(0)
        yield Delta(0, f"f{i}")
    raise RuntimeError("replica crashed")


def test_error_in_one_stream_propagates_and_cancels_the_others() -> None:
    log: list[str] = []

    async def main() -> list[StreamEvent]:
        got: list[StreamEvent] = []
        with pytest.raises(RuntimeError, match="replica crashed"):
            async for ev in merge([forever(log, "slow"), failing(2)], [0, 1], shared_prompt=True):
                got.append(ev)
        return got

    got = asyncio.run(asyncio.wait_for(main(), timeout=5))
    assert {d.text for d in got if isinstance(d, Delta)} <= {"slow", "f0", "f1"}
    assert log and log[0] in ("slow:cancelled", "slow:closed")


def test_consumer_closing_early_cancels_every_stream() -> None:
    log: list[str] = []

    async def main() -> None:
        m = merge([forever(log, "s0"), forever(log, "s1")], [0, 1], shared_prompt=True)
        first = await m.__anext__()
        assert isinstance(first, Delta) and first.text == "slow"
        await m.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout=5))
    assert sorted(x.split(":")[0] for x in log) == ["s0", "s1"]
