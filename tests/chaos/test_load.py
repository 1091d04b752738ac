"""The default server (`sluice serve`, no arguments) under hostile load, on loopback:
- 1,000 concurrent streams: each ends with a full response or a 503 at admission, nothing else, and
  the server's peak RSS stays under RSS_BOUND;
- 200 clients that disconnect at random points (some while queued, some mid-stream): within a second
  of the last one leaving, no request is running or waiting and the KV cache holds nothing.
Request loops are bounded in count and time."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RSS_BOUND = 3 * 1024**3  # the bundled 135M model, 1,000 open sockets and 256 admitted requests


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = start_server([], tmp_path_factory.mktemp("default"), timeout_s=300)
    yield s
    s.stop()


class PeakRSS:
    """Samples a process's resident memory every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def one_stream(client: httpx.AsyncClient, i: int) -> str:
    body = {"model": MODEL, "prompt": f"Request {i}: say something.", "max_tokens": 4, "ignore_eos": True,
            "stream": True}
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code == 503:
                err = (await r.aread()).decode()
                ok = '"type":"service_unavailable"' in err.replace(" ", "") and r.headers.get("retry-after")
                return "503" if ok else f"bad 503: {err[:200]}"
            if r.status_code != 200:
                return f"status {r.status_code}"
            events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as e:
        return f"transport {type(e).__name__}"
    if events[-1] != "data: [DONE]" or events.count("data: [DONE]") != 1:
        return f"broken stream {events[-2:]}"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    if any("error" in c for c in chunks):
        return f"error event {chunks[-1]}"
    reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    return "ok" if reasons == ["length"] else f"finish {reasons}"


def test_a_thousand_concurrent_streams_end_in_a_response_or_a_503(default_server: ServerProc) -> None:
    async def main() -> Counter[str]:
        limits = httpx.Limits(max_connections=1100, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=default_server.base_url, limits=limits, timeout=300) as client:
            results = await asyncio.wait_for(asyncio.gather(*(one_stream(client, i) for i in range(1000))), 280)
        return Counter(results)

    with PeakRSS(default_server.proc.pid) as rss:
        counts = asyncio.run(main())
    assert set(counts) <= {"ok", "503"}, counts
    assert counts["ok"] >= 256, counts  # the admission limit's worth at least got through
    assert rss.peak < RSS_BOUND, f"peak RSS {rss.peak / 2**20:.0f} MiB"
    print(f"1000 streams: {dict(counts)}, peak RSS {rss.peak / 2**20:.0f} MiB")


def _gauges(server: ServerProc) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    names = ("sluice:engine_requests_running", "sluice:engine_requests_waiting", "sluice:kv_cache_usage_perc",
             "sluice:num_requests_running", "sluice:num_requests_waiting")
    out = {}
    for name in names:
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
        assert m, f"{name} missing from /metrics"
        out[name] = float(m.group(1))
    return out


def test_two_hundred_random_disconnects_leak_nothing(default_server: ServerProc) -> None:
    rng = random.Random(12)

    async def leave_after(client: httpx.AsyncClient, i: int, delay: float) -> None:
        body = {"model": MODEL, "prompt": f"Client {i} tells a long story.", "max_tokens": 200,
                "ignore_eos": True, "stream": True}
        try:
            async with asyncio.timeout(delay):
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        pass
        except TimeoutError:
            pass  # the client hangs up here: before its first token or mid-stream

    async def main() -> None:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=default_server.base_url, limits=limits, timeout=120) as client:
            await asyncio.gather(*(leave_after(client, i, rng.uniform(0.05, 4.0)) for i in range(200)))

    asyncio.run(main())
    deadline = time.monotonic() + 1.0
    while True:
        g = _gauges(default_server)
        if all(v == 0 for v in g.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(v == 0 for v in g.values()), g
    r = httpx.post(f"{default_server.base_url}/v1/completions", timeout=60,
                   json={"model": MODEL, "prompt": "Still here?", "max_tokens": 4, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
