"""Start real `sluice serve` processes on free loopback ports for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(args: list[str], tmp_dir: Path, timeout_s: float = 120.0, wait: bool = True,
                 env: dict[str, str] | None = None) -> ServerProc:
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "serve.cli", "serve", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProc(proc, port, log_path)
    if wait:
        wait_healthy(server, timeout_s)
    return server


def wait_healthy(server: ServerProc, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"server not healthy after {timeout_s}s:\n{server.log()}")


def metric_sum(base_url: str, pattern: str) -> float:
    """Sum of every labelled sample of the Prometheus metric `sluice:<pattern>` (a regex) at /metrics;
    fails when none is exported."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values = [float(v) for v in re.findall(rf"^sluice:{pattern}\{{[^}}]*\}} (\S+)$", text, re.M)]
    assert values, f"{pattern} not exported"
    return sum(values)
