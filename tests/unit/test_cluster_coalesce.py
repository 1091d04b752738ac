"""coalesce(): the engine replica's batching of stream events for Ray (asyncio only, no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from serve.cluster.coalesce import coalesce


async def timed(events: list[tuple[float, object]], closed: list[str]) -> AsyncIterator[object]:
    """Yields each event after its delay (seconds); an Exception instance is raised instead."""
    try:
        for delay, event in events:
            await asyncio.sleep(delay)
            if isinstance(event, Exception):
                raise event
            yield event
        closed.append("end")
    except asyncio.CancelledError:
        closed.append("cancelled")
        raise
    except GeneratorExit:
        closed.append("closed")
        raise


async def collect(source: AsyncIterator[object], interval: float) -> list[tuple[float, list[object]]]:
    loop, t0, out = asyncio.get_running_loop(), asyncio.get_running_loop().time(), []
    async for batch in coalesce(source, interval):
        out.append((loop.time() - t0, batch))
    return out


def test_the_first_event_goes_at_once() -> None:
    got = asyncio.run(collect(timed([(0.0, "a"), (0.3, "b")], []), 2.0))
    assert got[0][1] == ["a"] and got[0][0] < 1.0  # not held for the 2 s window
    assert [b for _, b in got] == [["a"], ["b"]]


def test_fast_events_go_in_batches_keeping_every_event_in_order() -> None:
    events = [(0.0, "first")] + [(0.005, i) for i in range(20)] + [(0.0, "usage")]
    got = asyncio.run(collect(timed(events, []), 0.1))
    assert [e for _, b in got for e in b] == ["first", *range(20), "usage"]
    assert len(got) <= 8 and all(b for _, b in got)  # ~0.1 s of tokens in 0.1 s windows, not 22 items


def test_zero_interval_is_one_item_per_event() -> None:
    got = asyncio.run(collect(timed([(0.0, i) for i in range(5)], []), 0))
    assert [b for _, b in got] == [[0], [1], [2], [3], [4]]


def test_slow_tokens_go_one_by_one_without_waiting() -> None:
    events = [(0.0, "a"), (0.06, "b"), (0.06, "c")]
    got = asyncio.run(collect(timed(events, []), 0.03))
    assert [b for _, b in got] == [["a"], ["b"], ["c"]]  # each came after its window had passed


def test_the_end_of_the_stream_cuts_the_wait_short() -> None:
    got = asyncio.run(collect(timed([(0.0, "a"), (0.0, "b"), (0.01, "c")], []), 5.0))
    assert [e for _, b in got for e in b] == ["a", "b", "c"]
    assert got[-1][0] < 1.0


@pytest.mark.parametrize("interval", [0, 0.05])
def test_an_error_comes_after_the_events_before_it(interval: float) -> None:
    async def main() -> tuple[list[object], BaseException | None]:
        seen, error = [], None
        try:
            async for batch in coalesce(timed([(0.0, 1), (0.01, 2), (0.0, ValueError("boom"))], []), interval):
                seen.extend(batch)
        except ValueError as e:
            error = e
        return seen, error

    seen, error = asyncio.run(main())
    assert seen == [1, 2] and str(error) == "boom"


@pytest.mark.parametrize("interval", [0, 0.02])
def test_closing_early_closes_the_source(interval: float) -> None:
    """The client went away: the engine's generator must be closed (that is what aborts it)."""
    closed: list[str] = []

    async def main() -> None:
        source = timed([(0.0, 0)] + [(0.01, i) for i in range(1, 100)], closed)
        async with contextlib.aclosing(coalesce(source, interval)) as batches:
            async for batch in batches:
                if 3 in batch or len(batch) > 3:
                    break
        await asyncio.sleep(0)

    asyncio.run(main())
    assert closed and closed[0] in ("cancelled", "closed")


def test_cancelling_the_reader_cancels_the_source() -> None:
    closed: list[str] = []

    async def main() -> None:
        async def read() -> None:
            async for _ in coalesce(timed([(0.0, 0)] + [(0.05, i) for i in range(100)], closed), 0.02):
                pass

        task = asyncio.create_task(read())
        await asyncio.sleep(0.12)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert closed == ["cancelled"]
