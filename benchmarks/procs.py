"""Start a server process, wait until it answers, always stop it (its whole process group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


class StartFailed(Exception):
    """The server exited or did not become healthy in time; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(proc: subprocess.Popen[bytes], base: str, timeout_s: float, log: Path) -> float:
    """Poll /health, then /v1/models, until one answers 200. Returns seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise StartFailed(f"exited with code {proc.returncode} before becoming healthy:\n{log_tail(log)}")
        for path in ("/health", "/v1/models"):
            try:
                if httpx.get(base + path, timeout=2.0).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise StartFailed(f"not healthy after {timeout_s:.0f} s:\n{log_tail(log)}")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM to the group we created (servers spawn workers), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # pgid == pid: started with start_new_session
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path, port: int,
            timeout_s: float) -> Iterator[tuple[str, float, int]]:
    """Yields (base URL, seconds to healthy, pid); the process is stopped on every way out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            waited = wait_healthy(proc, base, timeout_s, log)
            yield base, waited, proc.pid
        finally:
            stop(proc)
