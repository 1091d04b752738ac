"""How busy the machine was with *other* work, measured before and during a benchmark.

A 1-minute load average read after a run counts the benchmark itself (a 2-thread server on 2 cores
reads ~2 and looks "busy" on an otherwise empty machine), so it cannot say whether anything else
competed. Here the benchmark's own process tree (this process and every descendant, which includes
the server `sluice bench peers` starts, plus the trees of any `server_pids` given: a server under test
started elsewhere, e.g. `sluice bench serve --server-pid`) is subtracted from the machine's busy CPU
time:

    other cores = (system busy seconds + steal seconds - own-tree CPU seconds) / wall seconds

Steal counts as other work: on a shared VM it is CPU the host gave to someone else. A process of the
tree that exits between two samples loses its last slice, which then counts as other work: the error
only ever makes a run look busier than it was.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

# A run is "idle" when other processes used less than this fraction of the logical cores, both in the
# sample before it and on average during it (0.2 of a core on the 2-core build machine).
IDLE_FRACTION = 0.10
BEFORE_S = 2.0
INTERVAL_S = 1.0


@dataclass(frozen=True)
class Tick:
    t: float  # time.monotonic()
    busy_s: float  # system-wide non-idle CPU seconds, steal included
    own_s: dict[int, float]  # pid -> user + system CPU seconds of each process in our tree


def _busy_seconds() -> float:
    c = psutil.cpu_times()
    # guest time is already inside user on Linux; iowait is idle time waiting on a disk.
    return sum(getattr(c, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _own_tree(server_pids: tuple[int, ...] = ()) -> dict[int, float]:
    roots = [psutil.Process()]
    for pid in server_pids:
        try:
            roots.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    out: dict[int, float] = {}
    for p in (p for r in roots for p in _tree(r)):
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[p.pid] = t.user + t.system
    return out


def tick(server_pids: tuple[int, ...] = ()) -> Tick:
    return Tick(time.monotonic(), _busy_seconds(), _own_tree(server_pids))


def other_cores(a: Tick, b: Tick) -> float:
    """Cores' worth of CPU that processes outside our tree used between two ticks."""
    own = sum(s - a.own_s.get(pid, 0.0) for pid, s in b.own_s.items())
    wall = b.t - a.t
    return max(0.0, (b.busy_s - a.busy_s - own) / wall) if wall > 0 else 0.0


def classify(before: float, during_mean: float | None, cores: int) -> str:
    """'idle' or 'busy' from other processes' CPU (in cores) before and on average during a run."""
    worst = max(before, during_mean or 0.0)
    return "idle" if worst < IDLE_FRACTION * cores else "busy"


class _Sampler:
    """Samples other processes' CPU every `interval_s` on a daemon thread (the benchmark is asyncio)."""

    def __init__(self, interval_s: float, server_pids: tuple[int, ...] = ()) -> None:
        self.interval_s, self.server_pids = interval_s, server_pids
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="machine-load", daemon=True)

    def _loop(self) -> None:
        prev = tick(self.server_pids)
        while not self._stop.wait(self.interval_s):
            now = tick(self.server_pids)
            self.samples.append(round(other_cores(prev, now), 3))
            prev = now

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_before(seconds: float = BEFORE_S, server_pids: tuple[int, ...] = ()) -> dict[str, Any]:
    a = tick(server_pids)
    time.sleep(seconds)
    return {"load_avg_1m": round(os.getloadavg()[0], 2),
            "other_cores": round(other_cores(a, tick(server_pids)), 3), "sample_s": seconds}


def summarize(before: dict[str, Any], samples: list[float], interval_s: float, cores: int) -> dict[str, Any]:
    mean = round(sum(samples) / len(samples), 3) if samples else None
    return {"cores_logical": cores, "before": before,
            "during": {"other_cores_mean": mean, "other_cores_max": max(samples, default=None),
                       "interval_s": interval_s, "samples": samples},
            "verdict": classify(before["other_cores"], mean, cores), "idle_below_cores": IDLE_FRACTION * cores}


@contextmanager
def measured_load(before_s: float = BEFORE_S, interval_s: float = INTERVAL_S,
                  server_pids: tuple[int, ...] = ()) -> Iterator[dict[str, Any]]:
    """Measure other work for `before_s` seconds, then sample it while the body runs; the yielded dict
    is filled in (summarize's shape) when the body ends. Store it as the result's machine["load"].
    The process trees of `server_pids` count as the benchmark's own (the server under test)."""
    out: dict[str, Any] = {}
    before = measure_before(before_s, server_pids)
    with _Sampler(interval_s, server_pids) as s:
        yield out
    out.update(summarize(before, s.samples, interval_s, os.cpu_count() or 1))
    if server_pids:
        out["server_pids"] = list(server_pids)


def load_text(machine: dict[str, Any]) -> str:
    """The wording for a result's machine load, from what it recorded (never from a post-run average)."""
    load = machine.get("load")
    if not load:
        after = machine.get("load_avg_1m")
        return ("load not measured before or during the run" +
                ("" if after is None else f" (the 1-minute load average after it, {after} on "
                 f"{machine.get('cores_logical', '?')} cores, counts the benchmark itself)"))
    d = load["during"]
    during = "no sample" if d["other_cores_mean"] is None else (
        f"{d['other_cores_mean']:.2f} on average (peak {d['other_cores_max']:.2f})")
    return (f"{load['verdict']}: other processes used {load['before']['other_cores']:.2f} of "
            f"{load['cores_logical']} cores in the {load['before']['sample_s']:g} s before the run and "
            f"{during} during it")
