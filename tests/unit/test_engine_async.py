"""AsyncEngine over the FAKE paged runner: concurrent streams, abort on close, idle without spinning."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve.engine.async_engine import AsyncEngine
from serve.engine.config import SchedulerConfig
from serve.engine.engine import LLMEngine
from serve.engine.request import RequestRejected
from serve.sampling_params import SamplingParams
from tests.unit.fake_runner import FakePagedRunner, reference_continuation


class SlowRunner(FakePagedRunner):
    """FAKE runner that takes a little time per step, like a forward pass."""

    def execute(self, batch):  # type: ignore[no-untyped-def]
        time.sleep(0.002)
        return super().execute(batch)


async def collect(stream) -> dict[int, list[int]]:  # type: ignore[no-untyped-def]
    out: dict[int, list[int]] = {}
    async for o in stream:
        out.setdefault(o.index, []).extend(o.new_token_ids)
    return out


def test_concurrent_streams_match_the_reference_and_the_loop_idles() -> None:
    async def main() -> None:
        eng = AsyncEngine(LLMEngine(SlowRunner(64, block_size=4), SchedulerConfig(max_num_batched_tokens=16)))
        eng.start()
        prompts = [[1, 2, 3], list(range(30)), [5, 5, 5, 5, 5]]
        params = SamplingParams(max_tokens=8, ignore_eos=True)
        results = await asyncio.gather(*(collect(eng.add_request(f"r{i}", p, params)) for i, p in enumerate(prompts)))
        for p, res in zip(prompts, results, strict=True):
            assert res == {0: reference_continuation(p, 8)}
        steps = eng.engine.num_steps
        cpu0 = time.process_time()
        await asyncio.sleep(0.3)
        assert eng.engine.num_steps == steps
        assert time.process_time() - cpu0 < 0.1  # the engine thread sleeps when idle
        n = await collect(eng.add_request("n", [7, 8, 9], SamplingParams(max_tokens=3, n=2, ignore_eos=True)))
        assert n == {0: reference_continuation([7, 8, 9], 3), 1: reference_continuation([7, 8, 9], 3)}
        await eng.stop()
    asyncio.run(main())


def test_closing_a_stream_aborts_the_request_and_frees_its_blocks() -> None:
    async def main() -> None:
        llm = LLMEngine(SlowRunner(64, block_size=4), SchedulerConfig())
        eng = AsyncEngine(llm)
        eng.start()
        stream = eng.add_request("long", list(range(20)), SamplingParams(max_tokens=200, ignore_eos=True))
        async for _ in stream:
            break
        await stream.aclose()
        never_started = eng.add_request("idle", [1, 2], SamplingParams(max_tokens=200, ignore_eos=True))
        await never_started.aclose()
        for _ in range(200):
            if not llm.has_unfinished() and eng.stats()["kv_cache_usage"] == 0.0:
                break
            await asyncio.sleep(0.01)
        assert not llm.has_unfinished() and llm.scheduler.kv.num_free_blocks() == 64
        await eng.stop()
    asyncio.run(main())


def test_rejection_raises_at_add_and_stop_ends_open_streams_with_abort() -> None:
    async def main() -> None:
        eng = AsyncEngine(LLMEngine(SlowRunner(4, block_size=4), SchedulerConfig()))
        eng.start()
        with pytest.raises(RequestRejected):
            eng.add_request("big", list(range(30)), SamplingParams(max_tokens=5))
        stream = eng.add_request("a", [1, 2], SamplingParams(max_tokens=14, ignore_eos=True))
        first = await stream.__anext__()
        assert first.new_token_ids
        await eng.stop()
        rest = [o async for o in stream]
        assert rest and rest[-1].finish_reason in ("abort", "length")
    asyncio.run(main())


class ThreadRecordingRunner(SlowRunner):
    """FAKE runner that records which thread built it and which thread runs its steps."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        import threading

        super().__init__(*args, **kwargs)
        self.built_on = threading.get_ident()
        self.stepped_on: set[int] = set()

    def execute(self, batch):  # type: ignore[no-untyped-def]
        import threading

        self.stepped_on.add(threading.get_ident())
        return super().execute(batch)


def test_launch_builds_and_steps_on_one_thread_off_the_loop() -> None:
    """One thread loads the model and runs every step (one OpenMP master), and it is not the loop's."""
    import threading

    async def main() -> None:
        eng = await AsyncEngine.launch(lambda: LLMEngine(ThreadRecordingRunner(64, block_size=4), SchedulerConfig()))
        runner = eng.engine.runner
        out = await collect(eng.add_request("a", [1, 2, 3], SamplingParams(max_tokens=4, ignore_eos=True)))
        assert out == {0: reference_continuation([1, 2, 3], 4)}
        assert runner.stepped_on == {runner.built_on}
        assert runner.built_on != threading.get_ident()
        await eng.stop()
    asyncio.run(main())


def test_launch_reports_a_failed_build() -> None:
    def broken() -> LLMEngine:
        raise ValueError("no such model")

    async def main() -> None:
        with pytest.raises(ValueError, match="no such model"):
            await AsyncEngine.launch(broken)
    asyncio.run(main())


def test_an_engine_crash_ends_every_open_stream_and_tells_the_owner() -> None:
    from serve.engine import faults
    from serve.engine.async_engine import EngineDead

    async def main() -> None:
        died: list[BaseException] = []
        eng = AsyncEngine(LLMEngine(SlowRunner(64, block_size=4), SchedulerConfig()), on_death=died.append)
        eng.start()
        faults.arm_engine_crash(eng.engine.num_steps + 5)
        params = SamplingParams(max_tokens=100, ignore_eos=True)
        streams = [eng.add_request(f"r{i}", [1 + i, 2, 3], params) for i in range(3)]
        results = await asyncio.wait_for(
            asyncio.gather(*(collect(s) for s in streams), return_exceptions=True), timeout=10)
        assert all(isinstance(r, EngineDead) for r in results), results
        assert len(died) == 1 and isinstance(died[0], faults.InjectedFault)
        assert not eng.is_running
        with pytest.raises(EngineDead):
            eng.add_request("late", [1], params)
        await eng.stop()
    asyncio.run(main())
