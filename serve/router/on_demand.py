"""Models on demand: a model's replicas start at its first request and stop when it is idle or when
room is needed for another (least recently used first).

Invariants:
- a request pins its model (`acquire`) from admission until its stream ends; a pinned model is never
  unloaded, so nothing is unloaded in the middle of a request;
- concurrent first requests share one load (one task per model), each bounded by `load_timeout_s`;
- `max_loaded` counts the models that hold a place: loaded, loading past `_make_room`, and unloaded but
  still stopping (their memory is not free yet), so two cold models cannot both load past the cap; a load
  that finds every resident model pinned waits for a place to free up. A load still waiting for a place
  holds none, so loads waiting for each other cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serve.backends.base import BackendUnavailable
from serve.config import OnDemandConfig

if TYPE_CHECKING:
    from serve.router.router import ModelGroup, Router

log = logging.getLogger("sluice.on_demand")


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"


@dataclass
class _Slot:
    state: ModelState = ModelState.UNLOADED
    pinned: int = 0  # requests admitted for this model and not finished
    last_used: float = 0.0
    loaded_at: float = 0.0
    load: asyncio.Task[None] | None = None
    unload: asyncio.Future[None] | None = None
    room: bool = False  # holds a place under max_loaded: from the end of _make_room until unloaded
    loads: int = 0
    load_seconds: float | None = None
    # The largest process RSS growth seen while it loaded: both local backends run in this process,
    # so this is the nearest honest figure for "its memory" (weights + KV cache + buffers). The
    # largest, because a reload can reuse pages the allocator kept from an earlier load and grow less.
    memory_bytes: int = 0


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


class ModelPool:
    def __init__(self, router: Router, config: OnDemandConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.router, self.config, self.clock = router, config, clock
        self.slots = {name: _Slot() for name in router.groups}
        self._room_freed = asyncio.Event()  # set whenever a place under max_loaded may have come free

    # ---- what the router calls around every request -----------------------------------------------
    async def acquire(self, group: ModelGroup) -> None:
        """Pin `group`'s model and wait until it is loaded; on failure the pin is undone."""
        slot = self.slots[group.name]
        slot.pinned += 1
        try:
            await self._ensure_loaded(group, slot)
        except BaseException:
            self.release(group)
            raise
        slot.last_used = self.clock()

    def release(self, group: ModelGroup) -> None:
        slot = self.slots[group.name]
        slot.pinned -= 1
        slot.last_used = self.clock()
        self._room_freed.set()

    # ---- state, for /health, /v1/models, /v1/stats, metrics ---------------------------------------
    def state(self, name: str) -> ModelState:
        return self.slots[name].state

    def resident(self, name: str) -> bool:
        return self.slots[name].state is ModelState.LOADED

    def model_info(self, name: str) -> dict[str, object]:
        s, now = self.slots[name], self.clock()
        loaded = s.state is ModelState.LOADED
        return {"state": s.state.value, "requests": s.pinned, "loads": s.loads, "load_seconds": s.load_seconds,
                "loaded_for_s": round(now - s.loaded_at, 1) if loaded else None,
                "idle_s": round(now - s.last_used, 1) if loaded and not s.pinned else 0.0 if loaded else None,
                "memory_bytes": s.memory_bytes if loaded else 0}

    # ---- loading ------------------------------------------------------------------------------------
    async def _ensure_loaded(self, group: ModelGroup, slot: _Slot) -> None:
        if slot.state is ModelState.LOADED:
            return
        if slot.load is None:
            slot.load = asyncio.create_task(self._load(group, slot))
        try:
            # shield: one waiter timing out or leaving must not cancel the load the others share
            await asyncio.wait_for(asyncio.shield(slot.load), self.config.load_timeout_s)
        except TimeoutError:
            raise BackendUnavailable(f"model '{group.name}' did not load within "
                                     f"{self.config.load_timeout_s:g} s") from None
        except BackendUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - any load failure is a 503 naming the model
            raise BackendUnavailable(f"model '{group.name}' failed to load: {e}") from e

    async def _load(self, group: ModelGroup, slot: _Slot) -> None:
        slot.state = ModelState.LOADING
        t0 = self.clock()
        # The deadline bounds real waits (asyncio's clock), whatever clock the bookkeeping reads.
        deadline = asyncio.get_running_loop().time() + self.config.load_timeout_s
        try:
            if slot.unload is not None:
                await slot.unload  # its backends must finish stopping before they start again
            await self._make_room(group.name, deadline)
            slot.room = True  # no await since _make_room's last check: nobody else took the place
            before = _rss()
            if not await self.router.start_group(group):
                raise BackendUnavailable(f"no replica of model '{group.name}' could be started")
            slot.memory_bytes = max(slot.memory_bytes, _rss() - before)
        except BaseException:
            slot.state = ModelState.UNLOADED
            try:
                await self.router.stop_group(group)
            finally:
                slot.room = False
                self._room_freed.set()
            raise
        finally:
            slot.load = None
        slot.state, slot.loads = ModelState.LOADED, slot.loads + 1
        slot.loaded_at = slot.last_used = self.clock()
        slot.load_seconds = round(slot.loaded_at - t0, 3)
        log.info("model %s loaded in %.2f s (+%.0f MiB RSS)", group.name, slot.load_seconds,
                 slot.memory_bytes / 2**20)

    async def _make_room(self, name: str, deadline: float) -> None:
        """Unload least-recently-used idle models until `name` fits under max_loaded."""
        cap, loop = self.config.max_loaded, asyncio.get_running_loop()
        while cap:
            others = [n for n, s in self.slots.items() if n != name and (s.room or s.unload is not None)]
            if len(others) < cap:
                return
            idle = [n for n in others if self.slots[n].state is ModelState.LOADED and not self.slots[n].pinned]
            if idle:
                await self.unload(min(idle, key=lambda n: self.slots[n].last_used))
                continue
            self._room_freed.clear()  # no await since the check above: a freed place cannot slip between
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BackendUnavailable(f"model '{name}' is waiting for room: {cap} model(s) loaded, all busy")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room_freed.wait(), remaining)

    async def unload(self, name: str) -> None:
        slot = self.slots[name]
        if slot.state is not ModelState.LOADED or slot.pinned:
            return
        # The state flips before the first await: a request arriving now starts a fresh load, which
        # waits for this unload to finish (`slot.unload`).
        slot.state = ModelState.UNLOADED
        group = self.router.groups[name]
        slot.unload = asyncio.ensure_future(self.router.stop_group(group))
        slot.room = False  # the place stays taken through `slot.unload` until the backends have stopped
        try:
            await slot.unload
        finally:
            slot.unload = None
            self._room_freed.set()
        log.info("model %s unloaded", name)

    async def idle_loop(self) -> None:
        """Unload models idle for idle_unload_s; runs for the server's life when that is set."""
        idle_s = self.config.idle_unload_s
        while idle_s:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = self.clock()
            for name, s in list(self.slots.items()):
                if s.state is ModelState.LOADED and not s.pinned and now - s.last_used >= idle_s:
                    await self.unload(name)

    # ---- metrics --------------------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily("sluice:model_state", "1 for the model's current state", labels=["model", "state"])
        loads = CounterMetricFamily("sluice:model_loads", "times the model was loaded", labels=["model"])
        secs = GaugeMetricFamily("sluice:model_load_seconds", "duration of the model's last load", labels=["model"])
        for name, s in self.slots.items():
            for st in ModelState:
                state.add_metric([name, st.value], 1.0 if s.state is st else 0.0)
            loads.add_metric([name], float(s.loads))
            if s.load_seconds is not None:
                secs.add_metric([name], s.load_seconds)
        return [state, loads, secs]
