"""A managed server child process: start, wait until healthy, restart on crash, stop with the parent.

The child gets its own process group (servers such as vLLM fork engine workers, and stopping must
reach all of them) and, on Linux, a parent-death signal, so a crashed sluice leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger("sluice.child")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildServer:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    start_timeout_s: float = 600.0
    max_restarts: int = 3
    on_restart: Callable[[], None] | None = None
    proc: subprocess.Popen | None = None
    restarts: int = 0
    _watch: asyncio.Task | None = None
    _stopping: bool = False

    async def start(self) -> None:
        self._spawn()
        await self._wait_healthy()
        self._watch = asyncio.create_task(self._watchdog())

    def _spawn(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - child owns it
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = subprocess.Popen(self.argv, env=child_env(self.env), stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    code = self.proc.returncode if self.proc else None
                    raise RuntimeError(f"{self.name} exited with code {code} while starting{self._log_hint()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.health_url)).status_code == 200:
                        return
                await asyncio.sleep(0.5)
        await self.stop()
        raise RuntimeError(f"{self.name} was not healthy after {self.start_timeout_s:.0f}s{self._log_hint()}")

    def _log_hint(self) -> str:
        return f"; see {self.log_path}" if self.log_path else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _watchdog(self) -> None:
        """Restart a crashed child, with backoff, up to max_restarts times."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self.alive() or self._stopping:
                continue
            if self.restarts >= self.max_restarts:
                log.error("%s died %d times; giving up", self.name, self.restarts + 1)
                return
            self.restarts += 1
            log.warning("%s exited with %s; restart %d/%d", self.name, self.proc and self.proc.returncode,
                        self.restarts, self.max_restarts)
            await asyncio.sleep(min(30.0, 2.0 ** self.restarts))
            try:
                self._spawn()
                await self._wait_healthy()
                if self.on_restart:
                    self.on_restart()
            except RuntimeError as e:
                log.error("%s restart failed: %s", self.name, e)

    async def stop(self) -> None:
        self._stopping = True
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.proc and self.proc.poll() is None:
            await asyncio.to_thread(_terminate_group, self.proc)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment minus our own API key (the child has no use for a client's credential), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k != "SLUICE_API_KEY"}, **extra}


def _terminate_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
