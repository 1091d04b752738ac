"""AsyncEngine: the LLMEngine step loop in its own thread, streams per request on the event loop.

Threading model: only the engine thread touches the LLMEngine (no lock held across a forward pass).
`launch` builds the engine on that thread too, so the model is loaded and run by one thread: every
OpenMP parallel region then comes from a single master. With a second master (weights loaded on one
thread, steps on another) libgomp counts more threads than cores and throttles its workers' spin-wait,
so each parallel region pays a futex wake-up: measured q4_linear 15 -> 71 us and a batch-1 decode step
7 -> 14 ms.
The event loop hands it commands through a thread-safe deque and wakes it with an Event; the thread
hands back each step's outputs with one `call_soon_threadsafe` per step, which routes them to
per-request asyncio queues. With nothing to do the thread blocks on the Event (no busy spin).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from serve.engine.engine import LLMEngine
from serve.engine.outputs import RequestOutput
from serve.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineDead(RuntimeError):
    """The engine thread has stopped; no request can run."""


DeathHook = Callable[[BaseException], None]


class AsyncEngine:
    def __init__(self, engine: LLMEngine, on_death: DeathHook | None = None) -> None:
        self.engine = engine
        # Called on the event loop once the engine thread has died (every open stream already ended
        # with EngineDead): the owner restarts the engine.
        self.on_death = on_death
        self.crashed: BaseException | None = None
        self._commands: deque[Callable[[], list[RequestOutput]]] = deque()
        self._wake = threading.Event()
        self._streams: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats: dict[str, float | int] = engine.stats()

    def start(self) -> None:
        """Start the engine thread; call from the event loop that will consume the streams."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="sluice-engine", daemon=True)
        self._thread.start()

    @classmethod
    async def launch(cls, build: Callable[[], LLMEngine], on_death: DeathHook | None = None) -> AsyncEngine:
        """Build the LLMEngine on the engine thread itself, then run it there (see the module doc).
        Raises whatever `build` raised."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[AsyncEngine] = loop.create_future()
        holder: list[AsyncEngine] = []

        def body() -> None:
            try:
                holder.append(cls(build(), on_death))
            except BaseException as exc:  # reported to the awaiting caller
                loop.call_soon_threadsafe(ready.set_exception, exc)
                return
            eng = holder[0]
            eng._loop, eng._thread = loop, threading.current_thread()
            loop.call_soon_threadsafe(ready.set_result, eng)
            eng._run()

        threading.Thread(target=body, name="sluice-engine", daemon=True).start()
        return await ready

    async def stop(self) -> None:
        """Stop the thread; every open stream ends with finish_reason 'abort'."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for rid, stream in list(self._streams.items()):
            outs = self.engine.abort_request(rid)
            for out in outs:
                stream.put_nowait(out)
            if not outs:  # queued but never admitted (or already done: then this is never read)
                stream.put_nowait(EngineDead("the native engine stopped"))

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.crashed is None

    def stats(self) -> dict[str, float | int]:
        """A snapshot published by the engine thread after each step (safe to read from anywhere)."""
        return self._stats

    def add_request(self, req_id: str, prompt_token_ids: Sequence[int], params: SamplingParams,
                    **kwargs: Any) -> RequestStream:
        """Queue a request; iterate the result for its outputs (all n samples, interleaved).

        Raises RequestRejected here, before anything is queued, when it can never run. Closing the
        iterator early aborts the request.
        """
        if not self.is_running:
            raise EngineDead("the native engine is not running")
        if req_id in self._streams:
            raise ValueError(f"request id {req_id!r} is already in use")
        self.engine.validate(len(prompt_token_ids), params, prompt_token_ids)
        kwargs.setdefault("arrival_time", time.monotonic())  # queue time starts here, not in the thread
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[req_id] = stream
        prompt = list(prompt_token_ids)

        def add() -> list[RequestOutput]:
            try:
                self.engine.add_request(req_id, prompt, params, **kwargs)
            except Exception as exc:  # reported to the caller's stream, never kills the thread
                self._deliver_error(req_id, exc)
            return []

        self._submit(add)
        return RequestStream(self, req_id, stream, params.n)

    def abort(self, req_id: str) -> None:
        """Abort a request (all its samples); its blocks are freed before the next step."""
        self._submit(lambda: self.engine.abort_request(req_id))

    def _close_stream(self, req_id: str, finished: bool) -> None:
        self._streams.pop(req_id, None)
        if not finished:
            self.abort(req_id)

    def _submit(self, command: Callable[[], list[RequestOutput]]) -> None:
        self._commands.append(command)  # deque.append is atomic: no lock needed
        self._wake.set()

    def _deliver_error(self, req_id: str, exc: BaseException) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._push, req_id, exc)

    def _push(self, req_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(req_id)
        if stream is not None:
            stream.put_nowait(item)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self._push(out.group_id, out)

    def _run(self) -> None:
        """The thread's body. Anything escaping a step or a command means the engine's state can no
        longer be trusted: every open stream ends with EngineDead and the owner is told (it restarts
        the engine) rather than requests waiting forever on a dead thread."""
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - reported to every stream and to the owner
            log.exception("the native engine crashed")
            self.crashed = exc
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._died, exc)

    def _died(self, exc: BaseException) -> None:
        """On the event loop: end every open stream, then tell the owner."""
        for stream in self._streams.values():
            stream.put_nowait(EngineDead(f"the native engine crashed ({type(exc).__name__}: {exc}); "
                                         "it is restarting"))
        if self.on_death is not None:
            self.on_death(exc)

    def _serve(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before draining: a command queued after this sets it again
            outputs: list[RequestOutput] = []
            while self._commands:
                outputs.extend(self._commands.popleft()())
            idle = not self.engine.has_unfinished()
            if not idle:
                outputs.extend(self._step())
            self._stats = self.engine.stats()
            if outputs and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._dispatch, outputs)
            if idle and not outputs:
                self._wake.wait()

    def _step(self) -> list[RequestOutput]:
        # A runner failure is isolated inside step() (only the sequence that caused it fails); what
        # escapes here is a control-plane fault, and _run treats it as a crash.
        outputs = self.engine.step()
        if self.engine.last_step_size == 0 and self.engine.has_unfinished():
            self._wake.wait(0.005)  # nothing schedulable this step: do not spin
        return outputs


class RequestStream:
    """Outputs of one request (all n samples, interleaved). `aclose()` before the end aborts it;
    unlike an async generator it does so even when iteration never started."""

    def __init__(self, owner: AsyncEngine, req_id: str, queue: asyncio.Queue[RequestOutput | BaseException],
                 n: int) -> None:
        self.req_id = req_id
        self._owner = owner
        self._queue = queue
        self._remaining = n
        self._closed = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._closed or not self._remaining:
            await self.aclose()
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._remaining = 0  # the engine never admitted it: nothing to abort
            await self.aclose()
            raise item
        if item.finished:
            self._remaining -= 1
        return item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._owner._close_stream(self.req_id, finished=not self._remaining)
