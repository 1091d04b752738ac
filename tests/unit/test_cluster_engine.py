"""EngineReplica.generate, the engine side of the Ray stream, with a scripted backend (no Ray): what
the ingress receives is every event in order, batched, with a BackendError as a Failure at its place;
Serve's cancellation (it throws CancelledError into the generator) closes the backend's stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve.backends.base import BackendError, Delta, GenerateRequest, Usage
from serve.cluster.engine import EngineReplica, Failure
from serve.sampling_params import SamplingParams


class Scripted:
    name = "scripted"

    def __init__(self, events: list[object], gap_s: float = 0.0) -> None:
        self.events, self.gap_s, self.closed = events, gap_s, False

    async def generate(self, request: GenerateRequest) -> AsyncIterator[object]:
        try:
            for e in self.events:
                await asyncio.sleep(self.gap_s)
                if isinstance(e, Exception):
                    raise e
                yield e
        finally:
            self.closed = True


class Bare(EngineReplica):
    def __del__(self) -> None:  # Serve's async shutdown hook: nothing to stop here
        pass


def replica(backend: Scripted, interval_s: float) -> EngineReplica:
    r = object.__new__(Bare)  # no backend start: the scripted one is ready
    r.backend, r.stream_interval_s = backend, interval_s
    return r


REQUEST = GenerateRequest(request_id="r", params=SamplingParams(max_tokens=8), prompt="hi")


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_events_arrive_in_order_with_usage_and_the_error_last(interval: float) -> None:
    deltas = [Delta(index=0, text=f"t{i}", token_ids=(i,)) for i in range(6)]
    end = [Delta(index=0, finish_reason="length"), Usage(prompt_tokens=2, completion_tokens=6)]

    async def main() -> list[list[object]]:
        return [b async for b in replica(Scripted([*deltas, *end], 0.005), interval).generate(REQUEST)]

    batches = asyncio.run(main())
    assert [e for b in batches for e in b] == [*deltas, *end]
    assert batches[0] == [deltas[0]]

    async def failing() -> list[list[object]]:
        script = [*deltas[:3], BackendError("engine fell over", 503, "unavailable")]
        return [b async for b in replica(Scripted(script, 0.005), interval).generate(REQUEST)]

    got = [e for b in asyncio.run(failing()) for e in b]
    assert got[:3] == deltas[:3] and isinstance(got[3], Failure) and len(got) == 4
    assert (got[3].status, got[3].kind, got[3].message) == (503, "unavailable", "engine fell over")


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_serve_cancelling_the_stream_closes_the_backend(interval: float) -> None:
    backend = Scripted([Delta(index=0, text="x")] * 1000, 0.005)

    async def main() -> None:
        gen = replica(backend, interval).generate(REQUEST)
        await gen.__anext__()
        await gen.__anext__()
        with pytest.raises(asyncio.CancelledError):  # what Serve does when the caller goes away
            await gen.athrow(asyncio.CancelledError())

    asyncio.run(main())
    assert backend.closed
